//! Tools: the versioned, approved things agents and workflows may call.
//!
//! A [`Tool`] is one named tool of an org; each of its versions is an
//! immutable [`ToolSpec`] (input and output JSON Schemas, a runtime, limits,
//! a cost). A version can run only once a subject allowed to approve has
//! approved it, and stops running when revoked. Registering the same
//! version again with the same spec changes nothing; with another spec it
//! is refused, so what was approved is always what runs.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{Actor, InvalidName, Scoped, check_dns_label};
use crate::span::Span;
use crate::{Aggregate, DomainEvent, ErrorClass, ErrorCode, OrgName};

/// A tool's name: dot-separated lower-case words such as
/// `payments.refund`, 1 to 120 characters; each word starts with a letter
/// and holds letters, digits, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ToolName(String);

impl ToolName {
    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        let ok = !value.is_empty()
            && value.len() <= 120
            && value.split('.').all(|word| {
                word.starts_with(|c: char| c.is_ascii_lowercase())
                    && word.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    })
            });
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidName {
                what: "tool name",
                value: value.chars().take(80).collect(),
                reason: "must be dot-separated lower-case words such as `payments.refund` (at most 120 characters)",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tool version label such as `1.0.0` or `2024-06-01`: 1 to 40
/// characters of letters, digits, `.`, `-` and `_`, starting with a letter
/// or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ToolVersion(String);

impl ToolVersion {
    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        let ok = !value.is_empty()
            && value.len() <= 40
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidName {
                what: "tool version",
                value: value.chars().take(80).collect(),
                reason: "must be 1 to 40 letters, digits, `.`, `-` or `_`, such as `1.2.0`",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An environment variable name: upper-case letters, digits and `_`, not
/// starting with a digit, at most 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvName(String);

impl EnvName {
    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        let ok = !value.is_empty()
            && value.len() <= 128
            && !value.starts_with(|c: char| c.is_ascii_digit())
            && value
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidName {
                what: "environment variable",
                value: value.chars().take(80).collect(),
                reason: "must be upper-case letters, digits and `_`, not starting with a digit",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of a secret an org keeps outside Charter's events (a DNS
/// label). Tools name secrets; only executors ever see their values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(String);

impl SecretName {
    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        check_dns_label("secret name", value)?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An HTTP header name: 1 to 100 token characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeaderName(String);

impl HeaderName {
    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        let ok = !value.is_empty()
            && value.len() <= 100
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidName {
                what: "header name",
                value: value.chars().take(80).collect(),
                reason: "must be an HTTP header name such as `Authorization`",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

crate::ids::parsed_name!(ToolName, ToolVersion, EnvName, SecretName, HeaderName);

/// A file the executor writes into the tool's working directory before it
/// starts, so that the approved version carries its own code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Script {
    /// A plain file name such as `main.py`.
    pub file: String,
    pub source: String,
}

/// A local process: JSON on stdin, JSON on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessRuntime {
    /// The program and its arguments; the program is an absolute path or
    /// is looked up on the server's `PATH`. It runs in a fresh working
    /// directory that holds `script`, if any.
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<Script>,
    /// The whole environment the process gets, besides its secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<EnvName, String>,
    /// Environment variables filled from the org's secrets at call time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<EnvName, SecretName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

/// An HTTP endpoint: the input is sent as the JSON body (as query
/// parameters for `GET`), the JSON response body is the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRuntime {
    pub url: String,
    #[serde(default = "post")]
    pub method: HttpMethod,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<HeaderName, String>,
    /// Headers filled from the org's secrets at call time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<HeaderName, SecretName>,
}

fn post() -> HttpMethod {
    HttpMethod::Post
}

/// A capability a remote agent serves (run by agents, not executors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentRuntime {
    pub capability: String,
}

/// Tools Charter itself implements, for tests, examples and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Builtin {
    /// Answers `{}`.
    Noop,
    /// Answers its input.
    Echo,
}

/// How a tool runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Runtime {
    Process(ProcessRuntime),
    Http(HttpRuntime),
    Agent(AgentRuntime),
    Builtin(Builtin),
}

impl Runtime {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Process(_) => "process",
            Self::Http(_) => "http",
            Self::Agent(_) => "agent",
            Self::Builtin(_) => "builtin",
        }
    }
}

/// Bounds on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Wall time, after which the call is killed (with every process it
    /// started).
    #[serde(default = "Limits::default_timeout")]
    pub timeout: Span,
    /// CPU time of a process tool; defaults to its timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Span>,
    /// Address space of a process tool, in MiB.
    #[serde(default = "Limits::default_memory")]
    pub memory_mb: u32,
    /// Most bytes kept of stdout (and, separately, of stderr); a call that
    /// writes more fails with `output_too_large`.
    #[serde(default = "Limits::default_output")]
    pub output_bytes: u32,
}

impl Limits {
    pub const MAX_TIMEOUT: Span = Span::from_secs(3600);
    pub const MAX_OUTPUT_BYTES: u32 = 256 * 1024;

    fn default_timeout() -> Span {
        Span::from_secs(30)
    }
    fn default_memory() -> u32 {
        512
    }
    fn default_output() -> u32 {
        64 * 1024
    }

    /// The CPU time a process may use.
    pub fn cpu_time(&self) -> Span {
        self.cpu.unwrap_or(self.timeout)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Self::default_timeout(),
            cpu: None,
            memory_mb: Self::default_memory(),
            output_bytes: Self::default_output(),
        }
    }
}

fn any_schema() -> Value {
    Value::Object(serde_json::Map::new())
}

/// One version of a tool, as declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolSpec {
    pub version: ToolVersion,
    #[serde(default)]
    pub description: String,
    /// The JSON Schema every call's input must match.
    #[serde(default = "any_schema")]
    pub input: Value,
    /// The JSON Schema every output must match.
    #[serde(default = "any_schema")]
    pub output: Value,
    /// Cost units one call charges to a contract's budget.
    #[serde(default)]
    pub cost: u32,
    pub runtime: Runtime,
    #[serde(default)]
    pub limits: Limits,
}

/// Limits on a spec's size.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
pub const MAX_SCRIPT_BYTES: usize = 256 * 1024;
pub const MAX_VERSIONS: usize = 500;
pub const MAX_COST: u32 = 1_000_000;

/// One problem in a JSON value against a schema, located.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaProblem {
    /// A JSON Pointer into the checked value (`""` for the whole).
    pub path: String,
    pub message: String,
}

impl fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "at `{}`: {}", self.path, self.message)
        }
    }
}

/// A JSON Schema, compiled once and checked many times. References to
/// other documents are not followed: a schema must be self-contained.
pub struct CompiledSchema(jsonschema::Validator);

impl fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CompiledSchema")
    }
}

impl CompiledSchema {
    /// Compiles a schema; the message says what is wrong with it.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        if !schema.is_object() && !schema.is_boolean() {
            return Err("a JSON Schema must be an object or a boolean".into());
        }
        jsonschema::options()
            .build(schema)
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// Every way `value` breaks the schema (at most 20).
    pub fn problems(&self, value: &Value) -> Vec<SchemaProblem> {
        self.0
            .iter_errors(value)
            .take(20)
            .map(|e| SchemaProblem {
                path: e.instance_path().to_string(),
                message: e.to_string().chars().take(300).collect(),
            })
            .collect()
    }

    pub fn check(&self, value: &Value) -> Result<(), Vec<SchemaProblem>> {
        if self.0.is_valid(value) {
            Ok(())
        } else {
            Err(self.problems(value))
        }
    }
}

impl ToolSpec {
    /// Checks every rule of a spec, naming the field that breaks one.
    pub fn check(&self) -> Result<(), ToolRejection> {
        let invalid = |path: &str, message: String| {
            Err(ToolRejection::InvalidSpec {
                path: path.to_owned(),
                message,
            })
        };
        if self.description.chars().count() > 2000 {
            return invalid("description", "must be at most 2000 characters".into());
        }
        if self.cost > MAX_COST {
            return invalid("cost", format!("must be at most {MAX_COST}"));
        }
        for (path, schema) in [("input", &self.input), ("output", &self.output)] {
            if serde_json::to_string(schema).map_or(usize::MAX, |s| s.len()) > MAX_SCHEMA_BYTES {
                return invalid(path, format!("must be at most {MAX_SCHEMA_BYTES} bytes"));
            }
            if let Err(message) = CompiledSchema::compile(schema) {
                return invalid(path, format!("is not a valid JSON Schema: {message}"));
            }
        }
        let limits = &self.limits;
        if limits.timeout.as_millis() < 10 || limits.timeout > Limits::MAX_TIMEOUT {
            return invalid("limits.timeout", "must be between 10ms and 1h".into());
        }
        if let Some(cpu) = limits.cpu
            && (cpu.as_millis() < 1000 || cpu > Limits::MAX_TIMEOUT)
        {
            return invalid("limits.cpu", "must be between 1s and 1h".into());
        }
        if !(16..=65_536).contains(&limits.memory_mb) {
            return invalid("limits.memoryMb", "must be between 16 and 65536".into());
        }
        if !(1024..=Limits::MAX_OUTPUT_BYTES).contains(&limits.output_bytes) {
            return invalid(
                "limits.outputBytes",
                format!("must be between 1024 and {}", Limits::MAX_OUTPUT_BYTES),
            );
        }
        match &self.runtime {
            Runtime::Process(process) => check_process(process),
            Runtime::Http(http) => check_http(http),
            Runtime::Agent(agent) => {
                let c = &agent.capability;
                if c.is_empty() || c.len() > 120 || c.chars().any(|c| c.is_whitespace()) {
                    return invalid(
                        "runtime.agent.capability",
                        "must be 1 to 120 characters without spaces".into(),
                    );
                }
                Ok(())
            }
            Runtime::Builtin(_) => Ok(()),
        }
    }
}

fn check_process(process: &ProcessRuntime) -> Result<(), ToolRejection> {
    let invalid = |path: String, message: &str| {
        Err(ToolRejection::InvalidSpec {
            path,
            message: message.to_owned(),
        })
    };
    if process.command.is_empty() || process.command.len() > 64 {
        return invalid(
            "runtime.process.command".into(),
            "must hold the program and at most 63 arguments",
        );
    }
    for (i, arg) in process.command.iter().enumerate() {
        if arg.len() > 4096 || arg.contains('\0') || (i == 0 && arg.trim().is_empty()) {
            return invalid(
                format!("runtime.process.command[{i}]"),
                "must be at most 4096 bytes without NUL (and the program not empty)",
            );
        }
    }
    if let Some(script) = &process.script {
        let plain = !script.file.is_empty()
            && script.file.len() <= 100
            && !script.file.starts_with('.')
            && script
                .file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        if !plain {
            return invalid(
                "runtime.process.script.file".into(),
                "must be a plain file name such as `main.py`",
            );
        }
        if script.source.len() > MAX_SCRIPT_BYTES {
            return invalid(
                "runtime.process.script.source".into(),
                "must be at most 256 KiB",
            );
        }
    }
    for (name, value) in &process.env {
        if value.len() > 8192 || value.contains('\0') {
            return invalid(
                format!("runtime.process.env.{name}"),
                "must be at most 8192 bytes without NUL",
            );
        }
        if process.secrets.contains_key(name) {
            return invalid(
                format!("runtime.process.env.{name}"),
                "is also filled from a secret; name it once",
            );
        }
    }
    Ok(())
}

fn check_http(http: &HttpRuntime) -> Result<(), ToolRejection> {
    let invalid = |path: String, message: &str| {
        Err(ToolRejection::InvalidSpec {
            path,
            message: message.to_owned(),
        })
    };
    let rest = http
        .url
        .strip_prefix("http://")
        .or_else(|| http.url.strip_prefix("https://"));
    let ok = rest.is_some_and(|rest| {
        !rest.is_empty()
            && !rest.starts_with('/')
            && rest.len() <= 2048
            && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    if !ok {
        return invalid(
            "runtime.http.url".into(),
            "must be an http:// or https:// URL",
        );
    }
    for (name, value) in &http.headers {
        if value.len() > 8192 || value.chars().any(char::is_control) {
            return invalid(
                format!("runtime.http.headers.{name}"),
                "must be at most 8192 bytes without control characters",
            );
        }
        if http.secrets.contains_key(name) {
            return invalid(
                format!("runtime.http.headers.{name}"),
                "is also filled from a secret; name it once",
            );
        }
    }
    Ok(())
}

/// Where a version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VersionStatus {
    /// Registered, waiting for approval; cannot run.
    Pending,
    Approved,
    /// Withdrawn; cannot run again.
    Revoked,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionState {
    pub spec: ToolSpec,
    pub status: VersionStatus,
    pub registered_by: Actor,
    #[serde(default)]
    pub approved_by: Option<Actor>,
    #[serde(default)]
    pub revoked: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolState {
    pub org: OrgName,
    pub name: ToolName,
    /// In the order they were registered.
    pub versions: Vec<VersionState>,
}

impl ToolState {
    pub fn version(&self, version: &ToolVersion) -> Option<&VersionState> {
        self.versions.iter().find(|v| v.spec.version == *version)
    }

    /// The version a call may run: the one named, or the latest approved.
    pub fn runnable(&self, version: Option<&ToolVersion>) -> Result<&VersionState, ToolRejection> {
        match version {
            None => self
                .versions
                .iter()
                .rev()
                .find(|v| v.status == VersionStatus::Approved)
                .ok_or(ToolRejection::NoApprovedVersion),
            Some(version) => {
                let state = self
                    .version(version)
                    .ok_or_else(|| ToolRejection::UnknownVersion(version.clone()))?;
                match state.status {
                    VersionStatus::Approved => Ok(state),
                    VersionStatus::Pending => Err(ToolRejection::NotApproved(version.clone())),
                    VersionStatus::Revoked => Err(ToolRejection::VersionRevoked(version.clone())),
                }
            }
        }
    }
}

/// The Tool aggregate; `None` until its first version is registered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tool(pub Option<ToolState>);

pub type ToolId = Scoped<ToolName>;

#[derive(Debug, Clone, PartialEq)]
pub enum ToolCommand {
    /// Adds a version (the first one creates the tool).
    Register {
        spec: Box<ToolSpec>,
        by: Actor,
    },
    Approve {
        version: ToolVersion,
        by: Actor,
    },
    Revoke {
        version: ToolVersion,
        reason: String,
        by: Actor,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ToolEvent {
    VersionRegistered {
        org: OrgName,
        name: ToolName,
        spec: Box<ToolSpec>,
        by: Actor,
    },
    VersionApproved {
        version: ToolVersion,
        by: Actor,
    },
    VersionRevoked {
        version: ToolVersion,
        reason: String,
        by: Actor,
    },
}

impl DomainEvent for ToolEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::VersionRegistered { .. } => "VersionRegistered",
            Self::VersionApproved { .. } => "VersionApproved",
            Self::VersionRevoked { .. } => "VersionRevoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolRejection {
    #[error("tool does not exist")]
    NotFound,
    #[error("invalid tool spec at `{path}`: {message}")]
    InvalidSpec { path: String, message: String },
    #[error(
        "version `{0}` is already registered with another spec; versions are immutable, register a new one"
    )]
    VersionImmutable(ToolVersion),
    #[error("version `{0}` is not registered")]
    UnknownVersion(ToolVersion),
    #[error("version `{0}` is not approved yet")]
    NotApproved(ToolVersion),
    #[error("version `{0}` was revoked")]
    VersionRevoked(ToolVersion),
    #[error("the tool has no approved version")]
    NoApprovedVersion,
    #[error("a tool holds at most {MAX_VERSIONS} versions")]
    TooManyVersions,
    #[error("a revocation needs a reason of 1 to 500 characters")]
    BadReason,
}

impl ErrorCode for ToolRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "tool_not_found",
            Self::InvalidSpec { .. } => "invalid_tool",
            Self::VersionImmutable(_) => "tool_version_immutable",
            Self::UnknownVersion(_) => "tool_version_not_found",
            Self::NotApproved(_) => "tool_version_not_approved",
            Self::VersionRevoked(_) => "tool_version_revoked",
            Self::NoApprovedVersion => "tool_not_approved",
            Self::TooManyVersions => "too_many_tool_versions",
            Self::BadReason => "invalid_reason",
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            Self::NotFound | Self::UnknownVersion(_) => ErrorClass::NotFound,
            Self::InvalidSpec { .. } | Self::BadReason => ErrorClass::InvalidInput,
            Self::VersionImmutable(_) => ErrorClass::AlreadyExists,
            Self::NotApproved(_)
            | Self::VersionRevoked(_)
            | Self::NoApprovedVersion
            | Self::TooManyVersions => ErrorClass::FailedPrecondition,
        }
    }
}

impl Aggregate for Tool {
    const KIND: &'static str = "tool";
    type Id = ToolId;
    type Command = ToolCommand;
    type Event = ToolEvent;
    type Rejection = ToolRejection;

    fn decide(&self, id: &ToolId, command: &ToolCommand) -> Result<Vec<ToolEvent>, ToolRejection> {
        match command {
            ToolCommand::Register { spec, by } => {
                if let Some(state) = &self.0 {
                    if let Some(existing) = state.version(&spec.version) {
                        return if existing.spec == **spec {
                            Ok(vec![])
                        } else {
                            Err(ToolRejection::VersionImmutable(spec.version.clone()))
                        };
                    }
                    if state.versions.len() >= MAX_VERSIONS {
                        return Err(ToolRejection::TooManyVersions);
                    }
                }
                spec.check()?;
                Ok(vec![ToolEvent::VersionRegistered {
                    org: id.org.clone(),
                    name: id.name.clone(),
                    spec: spec.clone(),
                    by: by.clone(),
                }])
            }
            ToolCommand::Approve { version, by } => {
                let state = self.0.as_ref().ok_or(ToolRejection::NotFound)?;
                let current = state
                    .version(version)
                    .ok_or_else(|| ToolRejection::UnknownVersion(version.clone()))?;
                match current.status {
                    VersionStatus::Approved => Ok(vec![]),
                    VersionStatus::Revoked => Err(ToolRejection::VersionRevoked(version.clone())),
                    VersionStatus::Pending => Ok(vec![ToolEvent::VersionApproved {
                        version: version.clone(),
                        by: by.clone(),
                    }]),
                }
            }
            ToolCommand::Revoke {
                version,
                reason,
                by,
            } => {
                let state = self.0.as_ref().ok_or(ToolRejection::NotFound)?;
                if reason.trim().is_empty() || reason.chars().count() > 500 {
                    return Err(ToolRejection::BadReason);
                }
                let current = state
                    .version(version)
                    .ok_or_else(|| ToolRejection::UnknownVersion(version.clone()))?;
                if current.status == VersionStatus::Revoked {
                    return Ok(vec![]);
                }
                Ok(vec![ToolEvent::VersionRevoked {
                    version: version.clone(),
                    reason: reason.clone(),
                    by: by.clone(),
                }])
            }
        }
    }

    fn exists(&self) -> bool {
        self.0.is_some()
    }

    fn evolve(&mut self, event: &ToolEvent) {
        match event {
            ToolEvent::VersionRegistered {
                org,
                name,
                spec,
                by,
            } => {
                let state = self.0.get_or_insert_with(|| ToolState {
                    org: org.clone(),
                    name: name.clone(),
                    versions: Vec::new(),
                });
                state.versions.push(VersionState {
                    spec: (**spec).clone(),
                    status: VersionStatus::Pending,
                    registered_by: by.clone(),
                    approved_by: None,
                    revoked: None,
                });
            }
            ToolEvent::VersionApproved { version, by } => {
                if let Some(v) = self.version_mut(version) {
                    v.status = VersionStatus::Approved;
                    v.approved_by = Some(by.clone());
                }
            }
            ToolEvent::VersionRevoked {
                version, reason, ..
            } => {
                if let Some(v) = self.version_mut(version) {
                    v.status = VersionStatus::Revoked;
                    v.revoked = Some(reason.clone());
                }
            }
        }
    }
}

impl Tool {
    fn version_mut(&mut self, version: &ToolVersion) -> Option<&mut VersionState> {
        self.0
            .as_mut()?
            .versions
            .iter_mut()
            .find(|v| v.spec.version == *version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;
    use serde_json::json;

    fn id() -> ToolId {
        Scoped::new(
            OrgName::parse("acme").unwrap(),
            ToolName::parse("text.count").unwrap(),
        )
    }

    fn actor(name: &str) -> Actor {
        Actor::parse(name).unwrap()
    }

    fn spec(version: &str) -> ToolSpec {
        serde_json::from_value(json!({
            "version": version,
            "input": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
            "output": {"type": "object"},
            "cost": 2,
            "runtime": {"process": {"command": ["python3", "main.py"], "script": {"file": "main.py", "source": "print('{}')"}}},
            "limits": {"timeout": "5s", "memoryMb": 128}
        }))
        .unwrap()
    }

    fn registered(version: &str) -> ToolEvent {
        ToolEvent::VersionRegistered {
            org: id().org,
            name: id().name,
            spec: Box::new(spec(version)),
            by: actor("subject:acme:alice"),
        }
    }

    #[test]
    fn a_version_registers_once_and_never_changes() {
        given::<Tool>(&id(), [])
            .when(ToolCommand::Register {
                spec: Box::new(spec("1.0.0")),
                by: actor("subject:acme:alice"),
            })
            .then_expect([registered("1.0.0")]);
        given::<Tool>(&id(), [registered("1.0.0")])
            .when(ToolCommand::Register {
                spec: Box::new(spec("1.0.0")),
                by: actor("root"),
            })
            .then_nothing();
        let mut changed = spec("1.0.0");
        changed.cost = 3;
        given::<Tool>(&id(), [registered("1.0.0")])
            .when(ToolCommand::Register {
                spec: Box::new(changed),
                by: actor("root"),
            })
            .then_reject(ToolRejection::VersionImmutable(
                ToolVersion::parse("1.0.0").unwrap(),
            ));
    }

    #[test]
    fn only_approved_versions_run() {
        let mut tool = Tool::replay(&[registered("1.0.0"), registered("1.1.0")]);
        let state = tool.0.clone().unwrap();
        let v1 = ToolVersion::parse("1.0.0").unwrap();
        assert_eq!(
            state.runnable(Some(&v1)).unwrap_err(),
            ToolRejection::NotApproved(v1.clone())
        );
        assert_eq!(
            state.runnable(None).unwrap_err(),
            ToolRejection::NoApprovedVersion
        );
        let events = tool
            .decide(
                &id(),
                &ToolCommand::Approve {
                    version: v1.clone(),
                    by: actor("root"),
                },
            )
            .unwrap();
        for e in &events {
            tool.evolve(e);
        }
        let state = tool.0.clone().unwrap();
        assert_eq!(state.runnable(None).unwrap().spec.version, v1);
        assert_eq!(state.version(&v1).unwrap().approved_by, Some(actor("root")));
        // Approving twice is a no-op; revoking stops it for good.
        assert!(
            tool.decide(
                &id(),
                &ToolCommand::Approve {
                    version: v1.clone(),
                    by: actor("root")
                }
            )
            .unwrap()
            .is_empty()
        );
        let events = tool
            .decide(
                &id(),
                &ToolCommand::Revoke {
                    version: v1.clone(),
                    reason: "leaks data".into(),
                    by: actor("root"),
                },
            )
            .unwrap();
        for e in &events {
            tool.evolve(e);
        }
        let state = tool.0.clone().unwrap();
        assert_eq!(
            state.runnable(Some(&v1)).unwrap_err(),
            ToolRejection::VersionRevoked(v1.clone())
        );
        assert_eq!(
            tool.decide(
                &id(),
                &ToolCommand::Approve {
                    version: v1.clone(),
                    by: actor("root")
                }
            )
            .unwrap_err(),
            ToolRejection::VersionRevoked(v1)
        );
    }

    #[test]
    fn approving_an_unknown_tool_or_version_is_not_found() {
        given::<Tool>(&id(), [])
            .when(ToolCommand::Approve {
                version: ToolVersion::parse("1").unwrap(),
                by: actor("root"),
            })
            .then_reject(ToolRejection::NotFound);
        given::<Tool>(&id(), [registered("1.0.0")])
            .when(ToolCommand::Approve {
                version: ToolVersion::parse("2").unwrap(),
                by: actor("root"),
            })
            .then_reject(ToolRejection::UnknownVersion(
                ToolVersion::parse("2").unwrap(),
            ));
    }

    #[test]
    fn bad_specs_name_their_field() {
        let check = |patch: serde_json::Value| {
            let mut value = serde_json::to_value(spec("1")).unwrap();
            for (k, v) in patch.as_object().unwrap() {
                value[k] = v.clone();
            }
            let spec: ToolSpec = serde_json::from_value(value).unwrap();
            match spec.check() {
                Err(ToolRejection::InvalidSpec { path, .. }) => path,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(check(json!({"input": {"type": 12}})), "input");
        assert_eq!(check(json!({"output": "nope"})), "output");
        assert_eq!(
            check(json!({"limits": {"timeout": "2h"}})),
            "limits.timeout"
        );
        assert_eq!(
            check(json!({"limits": {"outputBytes": 10}})),
            "limits.outputBytes"
        );
        assert_eq!(
            check(json!({"runtime": {"process": {"command": []}}})),
            "runtime.process.command"
        );
        assert_eq!(
            check(
                json!({"runtime": {"process": {"command": ["sh"], "script": {"file": "../x", "source": ""}}}})
            ),
            "runtime.process.script.file"
        );
        assert_eq!(
            check(json!({"runtime": {"http": {"url": "ftp://x"}}})),
            "runtime.http.url"
        );
        assert_eq!(
            check(
                json!({"runtime": {"process": {"command": ["sh"], "env": {"TOKEN": "x"}, "secrets": {"TOKEN": "t"}}}})
            ),
            "runtime.process.env.TOKEN"
        );
        assert!(
            serde_json::from_value::<ToolSpec>(json!({"version": "1", "runtime": {"process": {"command": ["x"], "env": {"lower": "x"}}}}))
                .is_err()
        );
    }

    #[test]
    fn schemas_check_values_with_paths() {
        let schema = CompiledSchema::compile(&spec("1").input).unwrap();
        assert!(schema.check(&json!({"text": "hi"})).is_ok());
        let problems = schema.check(&json!({"text": 5})).unwrap_err();
        assert_eq!(problems[0].path, "/text");
        let problems = schema.check(&json!({})).unwrap_err();
        assert!(problems[0].message.contains("text"), "{problems:?}");
    }

    #[test]
    fn names_follow_their_rules() {
        assert!(ToolName::parse("payments.refund").is_ok());
        assert!(ToolName::parse("a").is_ok());
        for bad in ["", "Payments", "a..b", ".a", "a.", "1a", "a b", "a.*"] {
            assert!(ToolName::parse(bad).is_err(), "{bad}");
        }
        assert!(ToolVersion::parse("1.2.0-rc.1").is_ok());
        for bad in ["", "-1", "1 0", "v/1"] {
            assert!(ToolVersion::parse(bad).is_err(), "{bad}");
        }
    }
}

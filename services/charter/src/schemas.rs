//! What `schema/` holds that is generated from the code: the GraphQL SDL,
//! the OpenAPI document and a JSON Schema per manifest kind. `charter
//! schema export` writes them; a test fails when the files drift.
//!
//! The manifest schemas are built from the same constants the parser
//! checks against (kinds, actions, resource kinds, name rules), so an
//! editor that validates with them agrees with `charter validate`.

use std::path::Path;

use charter_domain::expr::MAX_EXPRESSION_BYTES;
use charter_domain::manifest::{API_VERSION, KINDS, MAX_POLICY_BYTES};
use charter_domain::policy::ACTIONS;
use charter_domain::role::ResourceKind;
use charter_domain::tool::{Limits, MAX_COST, MAX_SCRIPT_BYTES};
use charter_domain::workflow::MAX_NODES;
use serde_json::{Value, json};

/// RFC 1123 labels, as `check_dns_label` accepts them.
const DNS_LABEL: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

fn name() -> Value {
    json!({"type": "string", "pattern": DNS_LABEL, "maxLength": 63})
}

fn display_name() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 200})
}

fn spec_of(kind: &str) -> Value {
    match kind {
        "Organization" => json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["displayName"],
            "properties": {
                "displayName": display_name(),
                "tags": {
                    "type": "object",
                    "maxProperties": 64,
                    "propertyNames": {"pattern": DNS_LABEL},
                    "additionalProperties": {"type": "string", "maxLength": 63, "pattern": "^\\S*$"}
                },
                "parent": name(),
            }
        }),
        "Subject" => json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["kind", "displayName"],
            "properties": {
                "kind": {"enum": ["user", "service_account", "agent"]},
                "displayName": display_name(),
                "disabled": {"type": "boolean", "default": false},
            }
        }),
        "Role" => {
            let mut actions: Vec<Value> = vec![json!("*")];
            actions.extend(ACTIONS.iter().map(|a| json!(a)));
            let mut kinds: Vec<Value> = vec![json!("*")];
            kinds.extend(ResourceKind::ALL.iter().map(|k| json!(k.as_str())));
            json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "description": {"type": "string", "maxLength": 1000},
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["actions", "resources"],
                            "properties": {
                                "actions": {
                                    "type": "array", "minItems": 1,
                                    "items": {"anyOf": [{"enum": actions}, {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,62}$"}]}
                                },
                                "resources": {"type": "array", "minItems": 1, "items": {"enum": kinds}}
                            }
                        }
                    },
                    "tools": {
                        "type": "array",
                        "uniqueItems": true,
                        "items": {"type": "string", "description": "`*`, a dotted tool name, or a dotted prefix ending in `.*`", "maxLength": 122}
                    }
                }
            })
        }
        "RoleBinding" => json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["subject", "role"],
            "properties": {
                "subject": name(),
                "role": name(),
                "jobSpace": name(),
            }
        }),
        "JobSpace" => json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["displayName"],
            "properties": {"displayName": display_name()}
        }),
        "Tool" => tool_spec(),
        "Workflow" => workflow_spec(),
        _ => json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["policy"],
            "properties": {
                "policy": {
                    "type": "string", "minLength": 1, "maxLength": MAX_POLICY_BYTES,
                    "description": "A Cedar policy set, validated against Charter's Cedar schema (`charter validate` reports problems with line and column)"
                }
            }
        }),
    }
}

/// Durations as `Span` parses them.
const SPAN: &str = "^[0-9]+(ms|s|m|h|d)?$";

fn tool_spec() -> Value {
    let env_name = json!({"pattern": "^[A-Z_][A-Z0-9_]{0,127}$"});
    let header_name = json!({"pattern": "^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$"});
    let one = |name: &str, body: Value| json!({"type": "object", "additionalProperties": false, "required": [name], "properties": {name: body}});
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["version", "runtime"],
        "properties": {
            "version": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$"},
            "description": {"type": "string", "maxLength": 2000},
            "input": {"type": ["object", "boolean"], "description": "The JSON Schema every call's input must match", "default": {}},
            "output": {"type": ["object", "boolean"], "description": "The JSON Schema every output must match", "default": {}},
            "cost": {"type": "integer", "minimum": 0, "maximum": MAX_COST, "default": 0},
            "runtime": {"oneOf": [
                one("process", json!({
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["command"],
                    "properties": {
                        "command": {"type": "array", "minItems": 1, "maxItems": 64, "items": {"type": "string", "maxLength": 4096}},
                        "script": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["file", "source"],
                            "properties": {
                                "file": {"type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$"},
                                "source": {"type": "string", "maxLength": MAX_SCRIPT_BYTES}
                            }
                        },
                        "env": {"type": "object", "propertyNames": env_name, "additionalProperties": {"type": "string", "maxLength": 8192}},
                        "secrets": {"type": "object", "propertyNames": env_name, "additionalProperties": name()}
                    }
                })),
                one("http", json!({
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["url"],
                    "properties": {
                        "url": {"type": "string", "pattern": "^https?://[^/\\s]", "maxLength": 2056},
                        "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE"], "default": "POST"},
                        "headers": {"type": "object", "propertyNames": header_name, "additionalProperties": {"type": "string", "maxLength": 8192}},
                        "secrets": {"type": "object", "propertyNames": header_name, "additionalProperties": name()}
                    }
                })),
                one("agent", json!({
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["capability"],
                    "properties": {"capability": {"type": "string", "pattern": "^\\S{1,120}$"}}
                })),
                one("builtin", json!({"enum": ["noop", "echo"]})),
            ]},
            "limits": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "timeout": {"type": "string", "pattern": SPAN, "default": "30s", "description": "Wall time, 10ms to 1h"},
                    "cpu": {"type": "string", "pattern": SPAN, "description": "CPU time of a process tool, 1s to 1h; defaults to the timeout"},
                    "memoryMb": {"type": "integer", "minimum": 16, "maximum": 65536, "default": 512},
                    "outputBytes": {"type": "integer", "minimum": 1024, "maximum": Limits::MAX_OUTPUT_BYTES, "default": 65536}
                }
            }
        }
    })
}

fn workflow_spec() -> Value {
    let cel = |what: &str| json!({"type": "string", "minLength": 1, "maxLength": MAX_EXPRESSION_BYTES, "description": what});
    let node_name = json!({"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$"});
    let version = json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$"});
    let node = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["name"],
        "properties": {
            "name": node_name,
            "needs": {"type": "array", "uniqueItems": true, "items": node_name},
            "when": cel("A CEL condition; false skips the node"),
            "input": {"type": "object", "additionalProperties": cel("A CEL expression for one input field")},
            "tool": {"type": "string", "maxLength": 120},
            "version": version,
            "workflow": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name"],
                "properties": {"name": name(), "version": version}
            },
            "approval": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "message": {"type": "string", "maxLength": 1000},
                    "timeout": {"type": "string", "pattern": SPAN, "default": "1d"}
                }
            },
            "wait": {"type": "string", "pattern": SPAN},
            "job": {"description": "Agent jobs are not available yet; a definition using one is refused"},
            "retry": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "attempts": {"type": "integer", "minimum": 1, "maximum": 20, "default": 1},
                    "backoff": {"type": "string", "pattern": SPAN, "default": "1s"},
                    "maxBackoff": {"type": "string", "pattern": SPAN, "default": "1m"},
                    "nonRetryable": {"type": "array", "uniqueItems": true, "items": {"type": "string"}}
                }
            },
            "timeout": {"type": "string", "pattern": SPAN}
        },
        "oneOf": [
            {"required": ["tool"]}, {"required": ["workflow"]}, {"required": ["approval"]},
            {"required": ["wait"]}, {"required": ["job"]}
        ]
    });
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["version", "nodes"],
        "properties": {
            "version": version,
            "description": {"type": "string", "maxLength": 2000},
            "input": {"type": ["object", "boolean"], "description": "The JSON Schema a run's input must match", "default": {}},
            "concurrency": {"type": "integer", "minimum": 1, "maximum": 64, "default": 8},
            "budget": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "calls": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1000},
                    "cost": {"type": "integer", "minimum": 0},
                    "wallTime": {"type": "string", "pattern": SPAN, "default": "1d"}
                }
            },
            "scopes": {"type": "array", "uniqueItems": true, "items": {"type": "string", "pattern": "^\\S{1,100}$"}},
            "output": cel("A CEL expression for the run's output over `input` and `nodes`"),
            "nodes": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_NODES,
                "items": node
            }
        }
    })
}

/// The JSON Schema (2020-12) of one manifest kind.
pub fn manifest_schema(kind: &str) -> Value {
    let mut metadata = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["name"],
        "properties": {"name": name(), "org": name()}
    });
    if kind == "Tool" {
        metadata["properties"]["name"] = json!({
            "type": "string",
            "maxLength": 120,
            "pattern": "^[a-z][a-z0-9_-]*(\\.[a-z][a-z0-9_-]*)*$",
            "description": "Dot-separated lower-case words such as `payments.refund`"
        });
    }
    if kind != "Organization"
        && let Some(required) = metadata["required"].as_array_mut()
    {
        required.push(json!("org"));
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("https://charter.dev/schema/manifests/{}.schema.json", kind.to_ascii_lowercase()),
        "title": format!("Charter {kind} manifest"),
        "type": "object",
        "additionalProperties": false,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": kind},
            "metadata": metadata,
            "spec": spec_of(kind),
        }
    })
}

/// Every generated file: its path under `schema/` and its text.
pub fn generated() -> Vec<(String, String)> {
    let mut files = vec![
        ("charter.graphql".to_owned(), crate::graphql::sdl()),
        (
            "openapi.json".to_owned(),
            crate::rest::openapi_json() + "\n",
        ),
    ];
    for kind in KINDS {
        let text = serde_json::to_string_pretty(&manifest_schema(kind)).unwrap_or_default() + "\n";
        files.push((
            format!("manifests/{}.schema.json", kind.to_ascii_lowercase()),
            text,
        ));
    }
    files
}

/// Writes every generated file under `dir`; returns the paths written.
pub fn export(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut written = Vec::new();
    for (path, text) in generated() {
        let full = dir.join(&path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&full, text)?;
        written.push(full.display().to_string());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use charter_domain::tool::CompiledSchema;

    /// Every example manifest matches the schema exported for its kind.
    #[test]
    fn the_examples_match_the_exported_schemas() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schema/examples");
        let mut files = crate::manifests::files(&examples).unwrap();
        files.extend(crate::manifests::files(&examples.join("tools")).unwrap());
        files.extend(crate::manifests::files(&examples.join("workflows")).unwrap());
        let mut seen = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for document in crate::manifests::documents(&text).unwrap() {
                let kind = document["kind"].as_str().unwrap().to_owned();
                let schema = CompiledSchema::compile(&manifest_schema(&kind)).unwrap();
                if let Err(problems) = schema.check(&document) {
                    panic!("{} ({kind}): {problems:?}", file.display());
                }
                seen += 1;
            }
        }
        assert!(seen >= 10, "{seen}");
        // And the schema refuses what the parser refuses.
        let schema = CompiledSchema::compile(&manifest_schema("Tool")).unwrap();
        let bad = serde_json::json!({
            "apiVersion": API_VERSION, "kind": "Tool",
            "metadata": {"name": "Bad Name", "org": "acme"},
            "spec": {"version": "1", "runtime": {"builtin": "noop"}}
        });
        assert!(schema.check(&bad).is_err());
    }
}

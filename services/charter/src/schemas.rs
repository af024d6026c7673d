//! What `schema/` holds that is generated from the code: the GraphQL SDL,
//! the OpenAPI document and a JSON Schema per manifest kind. `charter
//! schema export` writes them; a test fails when the files drift.
//!
//! The manifest schemas are built from the same constants the parser
//! checks against (kinds, actions, resource kinds, name rules), so an
//! editor that validates with them agrees with `charter validate`.

use std::path::Path;

use charter_domain::manifest::{API_VERSION, KINDS, MAX_POLICY_BYTES};
use charter_domain::policy::ACTIONS;
use charter_domain::role::ResourceKind;
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

/// The JSON Schema (2020-12) of one manifest kind.
pub fn manifest_schema(kind: &str) -> Value {
    let mut metadata = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["name"],
        "properties": {"name": name(), "org": name()}
    });
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

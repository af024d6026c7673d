//! The files in `schema/` that are generated from the code must match it:
//! the GraphQL SDL, the OpenAPI document and the manifest JSON Schemas.
//! Run with `CHARTER_UPDATE_SCHEMA=1` (or `charter schema export`) to
//! write them after a deliberate change.

use std::path::PathBuf;

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schema")
}

#[test]
fn generated_schemas_match_the_code() {
    let dir = schema_dir();
    if std::env::var_os("CHARTER_UPDATE_SCHEMA").is_some() {
        charter::schemas::export(&dir).expect("writing the schemas");
    }
    let mut drifted = Vec::new();
    for (path, expected) in charter::schemas::generated() {
        let actual = std::fs::read_to_string(dir.join(&path)).unwrap_or_default();
        if actual != expected {
            drifted.push(path);
        }
    }
    assert!(
        drifted.is_empty(),
        "schema/ drifted from the code: {drifted:?}; run `cargo run -p charter -- schema export` (or this test with CHARTER_UPDATE_SCHEMA=1) and review the diff"
    );
}

#[test]
fn the_openapi_document_is_3_1_and_names_every_endpoint() {
    let doc: serde_json::Value = serde_json::from_str(&charter::rest::openapi_json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/apply",
        "/v1/commands",
        "/v1/orgs",
        "/v1/orgs/{org}",
        "/v1/orgs/{org}/roles",
        "/v1/orgs/{org}/audit",
        "/v1/check-access",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
}

#[test]
fn the_sdl_has_the_queries_and_mutations() {
    let sdl = charter::graphql::sdl();
    for needle in [
        "organizations(",
        "checkAccess(",
        "auditLog(",
        "apply(",
        "submitCommand(",
    ] {
        assert!(sdl.contains(needle), "{needle} missing from the SDL");
    }
}

//! Reading manifest files: YAML (several documents separated by `---`) or
//! JSON (one object or an array of them), from a file or every
//! `.yaml`/`.yml`/`.json` file of a directory, in name order. Decoding into
//! typed manifests and its field-path errors belong to
//! `charter_domain::manifest`; this module only reads and reports where.

use std::path::{Path, PathBuf};

use charter_domain::manifest::{Manifest, ManifestError, parse_documents};
use serde_json::Value;

/// Largest manifest file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// What was wrong with one file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestFileError {
    #[error("{file}: {message}")]
    Unreadable { file: String, message: String },
    #[error("{file}: not valid YAML or JSON: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {error}")]
    Invalid { file: String, error: ManifestError },
}

/// Splits a text into documents: JSON when it starts with `{` or `[`,
/// YAML otherwise.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        serde_json::from_str::<Value>(trimmed)
            .map(|v| vec![v])
            .map_err(|e| e.to_string())
    } else if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<Value>>(trimmed).map_err(|e| e.to_string())
    } else {
        // YAML 1.2 booleans only: `n`, `no`, `on` and `off` stay strings
        // (a schema's `required: [n]` is a field name, not `false`).
        let options = serde_saphyr::options! { strict_booleans: true };
        serde_saphyr::from_multiple_with_options::<Value>(text, options).map_err(|e| e.to_string())
    }
}

/// Reads and parses the manifests of one text; `file` names it in errors.
pub fn parse_text(file: &str, text: &str) -> Result<Vec<Manifest>, Vec<ManifestFileError>> {
    let docs = documents(text).map_err(|message| {
        vec![ManifestFileError::Syntax {
            file: file.to_owned(),
            message,
        }]
    })?;
    parse_documents(&docs).map_err(|errors| {
        errors
            .into_iter()
            .map(|error| ManifestFileError::Invalid {
                file: file.to_owned(),
                error,
            })
            .collect()
    })
}

/// The manifest files a path names.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, ManifestFileError> {
    let unreadable = |e: std::io::Error| ManifestFileError::Unreadable {
        file: path.display().to_string(),
        message: e.to_string(),
    };
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(unreadable)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every manifest under `path`, or every problem found in any of them.
pub fn read(path: &Path) -> Result<Vec<Manifest>, Vec<ManifestFileError>> {
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    for file in files(path).map_err(|e| vec![e])? {
        let name = file.display().to_string();
        let text = match std::fs::metadata(&file) {
            Ok(meta) if meta.len() > MAX_FILE_BYTES => Err(format!(
                "larger than {MAX_FILE_BYTES} bytes; split it into several files"
            )),
            Ok(_) => std::fs::read_to_string(&file).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match text {
            Ok(text) => match parse_text(&name, &text) {
                Ok(found) => manifests.extend(found),
                Err(found) => errors.extend(found),
            },
            Err(message) => errors.push(ManifestFileError::Unreadable {
                file: name,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_are_valid() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schema/examples");
        let mut manifests = read(&examples.join("tools")).unwrap();
        assert!(manifests.len() >= 3, "the tool examples are there");
        manifests.extend(read(&examples.join("workflows")).unwrap());
        manifests.extend(read(&examples).unwrap_or_else(|errors| {
            panic!(
                "{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        }));
        let kinds: std::collections::BTreeSet<_> = manifests.iter().map(Manifest::kind).collect();
        assert_eq!(
            kinds.len(),
            charter_domain::manifest::KINDS.len(),
            "every kind has an example"
        );
    }

    #[test]
    fn yaml_and_json_read_alike() {
        let yaml = "apiVersion: charter.dev/v1\nkind: Organization\nmetadata: {name: acme}\nspec: {displayName: Acme}\n";
        let json = r#"[{"apiVersion":"charter.dev/v1","kind":"Organization","metadata":{"name":"acme"},"spec":{"displayName":"Acme"}}]"#;
        assert_eq!(
            parse_text("a.yaml", yaml).unwrap(),
            parse_text("a.json", json).unwrap()
        );
    }

    #[test]
    fn bad_files_say_where() {
        let errors = parse_text("bad.yaml", "kind: [unclosed\n").unwrap_err();
        assert!(matches!(errors[0], ManifestFileError::Syntax { .. }));
        let errors = parse_text(
            "bad.yaml",
            "apiVersion: charter.dev/v1\nkind: Organization\nmetadata: {name: acme}\nspec: {}\n---\nkind: Nope\n",
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with("bad.yaml: document 0: spec"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("bad.yaml: document 1: kind"),
            "{text:?}"
        );
    }

    #[test]
    fn only_yaml_1_2_booleans_are_booleans() {
        let docs = documents("a: [n, no, on, off, yes, y]\nb: true\n").unwrap();
        assert_eq!(
            docs[0],
            serde_json::json!({"a": ["n", "no", "on", "off", "yes", "y"], "b": true})
        );
    }

    #[test]
    fn alias_bombs_are_refused() {
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
        assert!(documents(bomb).is_err(), "a billion laughs must not expand");
    }
}

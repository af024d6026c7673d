//! Where secret values come from. Tools name secrets; values are read at
//! call time and never stored in events.

use std::path::PathBuf;

use charter_domain::OrgName;
use charter_domain::tool::SecretName;

/// A source of secret values, per org.
pub trait Secrets: Send + Sync {
    fn get(&self, org: &OrgName, name: &SecretName) -> Option<String>;
}

/// Secrets kept as files: `<dir>/<org>/<name>`, the value being the file's
/// content without its trailing newline. Names are DNS labels, so a name
/// cannot leave its org's folder.
#[derive(Debug, Clone)]
pub struct SecretDir(pub PathBuf);

impl Secrets for SecretDir {
    fn get(&self, org: &OrgName, name: &SecretName) -> Option<String> {
        let path = self.0.join(org.as_str()).join(name.as_str());
        let text = std::fs::read_to_string(path).ok()?;
        Some(text.strip_suffix('\n').unwrap_or(&text).to_owned())
    }
}

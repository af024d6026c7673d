//! Authentication: who is asking.
//!
//! Two credentials travel as `Authorization: Bearer …`: a JWT signed with
//! the server's HS256 key (`charter token issue`), naming `root` or an
//! `org:subject`; or a subject's API key (`chk_…`), which the server knows
//! only by its SHA-256 digest, looked up in the access index. Either way
//! the subject must exist and be enabled at the time of the request: a
//! token outlives nothing it names.
//!
//! The signing key comes from `signing_key`, or is generated once into
//! `<data_dir>/charter-signing.key` (mode 0600) and read from there by the
//! server and by `charter token issue` alike.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use charter_domain::ids::Scoped;
use charter_domain::subject::SubjectId;
use charter_domain::{ErrorClass, ErrorCode, OrgName};
use charter_projections::access::AccessIndex;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Config;

/// The issuer every Charter token names.
pub const ISSUER: &str = "charter";
/// The file a generated signing key is kept in, under `data_dir`.
pub const KEY_FILE: &str = "charter-signing.key";
/// How API keys start, so that they are told apart from tokens (and found
/// by secret scanners).
pub const API_KEY_PREFIX: &str = "chk_";
/// Longest token lifetime `token issue` grants.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// The built-in administrator: holds every permission in every org.
    Root,
    /// A subject of one org.
    Subject(SubjectId),
}

impl Principal {
    /// The org the principal belongs to (`None` for root).
    pub fn org(&self) -> Option<&OrgName> {
        match self {
            Self::Root => None,
            Self::Subject(id) => Some(&id.org),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root => f.write_str("root"),
            Self::Subject(id) => id.fmt(f),
        }
    }
}

impl FromStr for Principal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "root" {
            return Ok(Self::Root);
        }
        Scoped::from_str(s)
            .map(Self::Subject)
            .map_err(|e| format!("`{s}` is neither `root` nor `org:subject`: {e}"))
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credential: send `Authorization: Bearer <token or API key>`")]
    Missing,
    #[error("the credential is not valid")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    #[error("the credential's subject does not exist or is disabled")]
    InactiveSubject,
}

impl ErrorCode for AuthError {
    fn code(&self) -> &'static str {
        match self {
            Self::Missing => "unauthenticated",
            Self::Invalid => "invalid_credential",
            Self::Expired => "token_expired",
            Self::InactiveSubject => "inactive_subject",
        }
    }
    fn class(&self) -> ErrorClass {
        ErrorClass::Unauthenticated
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// The server's token key.
#[derive(Clone)]
pub struct SigningKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The configured key, or the one kept in the data directory
    /// (generated there the first time).
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        if let Some(secret) = &config.signing_key {
            return Ok(Self::from_secret(secret.0.as_bytes()));
        }
        let path = Path::new(&config.data_dir).join(KEY_FILE);
        let secret = read_or_create(&path)?;
        Ok(Self::from_secret(secret.as_bytes()))
    }

    /// A token for `principal`, valid for `ttl`.
    pub fn issue(&self, principal: &Principal, ttl: Duration) -> anyhow::Result<String> {
        if ttl.is_zero() || ttl > MAX_TTL {
            anyhow::bail!("the lifetime must be between 1 second and 366 days");
        }
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            sub: principal.to_string(),
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + ttl.as_secs().max(1),
            jti: uuid::Uuid::now_v7().to_string(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The principal a token names, if it is ours and still valid.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        Principal::from_str(&data.claims.sub).map_err(|_| AuthError::Invalid)
    }
}

fn read_or_create(path: &PathBuf) -> anyhow::Result<String> {
    use std::io::Write;
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= 32 => return Ok(text.trim().to_owned()),
        Ok(_) => anyhow::bail!(
            "the signing key in {} is shorter than 32 characters",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("reading the signing key {}: {e}", path.display()),
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating the data directory {}: {e}", dir.display()))?;
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "generated a token signing key");
            Ok(secret)
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::thread::sleep(Duration::from_millis(50));
            let text = std::fs::read_to_string(path)?;
            Ok(text.trim().to_owned())
        }
        Err(e) => anyhow::bail!("writing the signing key {}: {e}", path.display()),
    }
}

/// A new API key: the plain text (shown once) and its digest (stored).
pub fn new_api_key() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("{API_KEY_PREFIX}{}", hex::encode(bytes));
    let digest = key_digest(&key);
    (key, digest)
}

/// The SHA-256 digest of an API key, in lower-case hex.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Parses a duration such as `90s`, `15m`, `12h`, `30d` (a bare number is
/// seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 90s, 15m, 12h or 30d"))?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(|| format!("`{text}` is not a duration such as 90s, 15m, 12h or 30d"))?;
    Ok(Duration::from_secs(seconds))
}

/// Checks credentials against the signing key and the access index.
#[derive(Clone)]
pub struct Authenticator {
    key: SigningKey,
}

impl Authenticator {
    pub fn new(key: SigningKey) -> Self {
        Self { key }
    }

    /// The principal behind an `Authorization` header value.
    pub fn authenticate(
        &self,
        header: Option<&str>,
        access: &AccessIndex,
    ) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?.trim();
        let (scheme, credential) = header.split_once(' ').ok_or(AuthError::Invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Invalid);
        }
        let credential = credential.trim();
        if credential.is_empty() {
            return Err(AuthError::Missing);
        }
        let principal = if credential.starts_with(API_KEY_PREFIX) {
            let digest = key_digest(credential);
            let owner = access
                .read_all(|_, facts| facts.key_owner(&digest).cloned())
                .ok_or(AuthError::Invalid)?;
            Principal::Subject(owner)
        } else {
            self.key.verify(credential)?
        };
        if let Principal::Subject(id) = &principal {
            let active = access.read(|a| a.grants().active_subject(&id.org, &id.name).is_ok());
            if !active {
                return Err(AuthError::InactiveSubject);
            }
        }
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_expire() {
        let key = SigningKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let alice: Principal = "acme:alice".parse().unwrap();
        let token = key.issue(&alice, Duration::from_secs(60)).unwrap();
        assert_eq!(key.verify(&token), Ok(alice));
        let other = SigningKey::from_secret(b"another key, just as long as that");
        assert_eq!(other.verify(&token), Err(AuthError::Invalid));
        assert_eq!(key.verify("not.a.token"), Err(AuthError::Invalid));
        let mut tampered = token.clone();
        tampered.pop();
        assert_eq!(key.verify(&tampered), Err(AuthError::Invalid));
    }

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("5w").is_err());
        assert!(parse_ttl("99999999999999999999d").is_err());
    }

    #[test]
    fn api_keys_are_known_by_digest_only() {
        let (key, digest) = new_api_key();
        assert!(key.starts_with(API_KEY_PREFIX));
        assert_eq!(key_digest(&key), digest);
        assert!(!digest.contains(&key[API_KEY_PREFIX.len()..]));
    }

    #[test]
    fn a_generated_key_is_kept() {
        let dir = std::env::temp_dir().join(format!("charter-key-{}", uuid::Uuid::now_v7()));
        let path = dir.join(KEY_FILE);
        let first = read_or_create(&path).unwrap();
        let second = read_or_create(&path).unwrap();
        assert_eq!(first, second);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

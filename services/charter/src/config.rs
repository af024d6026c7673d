//! The one place configuration is read and validated.
//!
//! Layers, each overriding the one before: built-in defaults, a TOML file
//! (`--config`), environment variables (`CHARTER_DATABASE_URL`,
//! `CHARTER_NATS_URL`, `CHARTER_LISTEN`, `CHARTER_LOG`, … one per key), then
//! command-line flags. Anything invalid stops start-up with a message that
//! names the key.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Every setting of a `charter` process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `sqlite://FILE` (embedded; created if missing) or `postgres://…`.
    pub database_url: String,
    /// PostgreSQL only: the schema holding Charter's tables.
    pub database_schema: Option<String>,
    /// Connections in the store's pool.
    pub database_max_connections: u32,
    /// PostgreSQL only: how many groups of appends may be on their way at
    /// once (one connection each).
    pub database_append_lanes: u32,
    /// When set, events are published to JetStream; otherwise to the
    /// in-process bus.
    pub nats_url: Option<String>,
    pub nats_stream: String,
    pub nats_subject_prefix: String,
    /// The HTTP address; port 0 picks a free port (logged at start).
    pub listen: String,
    /// A `tracing` filter such as `info` or `charter=debug,sqlx=warn`.
    pub log: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Run migrations when `serve` starts.
    pub migrate_on_start: bool,
    /// Largest serialized event payload, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one append.
    pub max_batch: usize,
    /// How long `serve` lets in-flight requests and tool calls finish on
    /// shutdown.
    pub shutdown_grace_seconds: u64,
    /// Where generated state lives (the token signing key, when
    /// `signing_key` is not set).
    pub data_dir: String,
    /// The key that signs and checks tokens (HS256), at least 32
    /// characters. When unset, one is generated into
    /// `<data_dir>/charter-signing.key` on first use.
    pub signing_key: Option<Secret>,
    /// Largest request body the API accepts, in bytes.
    pub max_body_bytes: usize,
    /// Longest a read that asks for a position (read-your-writes) waits.
    pub read_wait_ms: u64,
    /// Workflow nodes this process executes at once.
    pub workers: usize,
    /// Where tools' secrets are kept: `<secrets_dir>/<org>/<name>`, one
    /// file per secret. Defaults to `<data_dir>/secrets`.
    pub secrets_dir: Option<String>,
}

/// A value that must never reach a log: its `Debug` is redacted.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://charter.db";

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            database_schema: None,
            database_max_connections: 32,
            database_append_lanes: 1,
            nats_url: None,
            nats_stream: charter_commands::jetstream::DEFAULT_STREAM.to_owned(),
            nats_subject_prefix: charter_commands::jetstream::DEFAULT_SUBJECT_PREFIX.to_owned(),
            listen: DEFAULT_LISTEN.to_owned(),
            log: "info".to_owned(),
            log_format: "text".to_owned(),
            migrate_on_start: true,
            max_event_bytes: 512 * 1024,
            max_batch: 10_000,
            shutdown_grace_seconds: 10,
            data_dir: ".".to_owned(),
            signing_key: None,
            max_body_bytes: 1024 * 1024,
            read_wait_ms: 2000,
            workers: 32,
            secrets_dir: None,
        }
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("configuration file `{0}` does not exist")]
    MissingFile(String),
}

/// Keys read from the environment, each as `CHARTER_<KEY>`. Other
/// `CHARTER_` variables (a client's `CHARTER_SERVER`, say) are not ours.
const ENV_KEYS: &[&str] = &[
    "database_url",
    "database_schema",
    "database_max_connections",
    "database_append_lanes",
    "nats_url",
    "nats_stream",
    "nats_subject_prefix",
    "listen",
    "log",
    "log_format",
    "migrate_on_start",
    "max_event_bytes",
    "max_batch",
    "shutdown_grace_seconds",
    "data_dir",
    "signing_key",
    "max_body_bytes",
    "read_wait_ms",
    "workers",
    "secrets_dir",
];

/// Flags given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_schema: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrate_on_start: Option<bool>,
}

impl Config {
    /// Reads every layer and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.display().to_string()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment
            .merge(Env::prefixed("CHARTER_").only(ENV_KEYS))
            .merge(Serialized::defaults(overrides));
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let url = self.database_url.as_str();
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            return invalid(
                "database_url",
                "must start with postgres://, postgresql:// or sqlite:".into(),
            );
        }
        if self.listen_addr().is_none() {
            return invalid(
                "listen",
                format!("`{}` is not an address such as 127.0.0.1:8080", self.listen),
            );
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return invalid(
                "log",
                format!("`{}` is not a log filter: {error}", self.log),
            );
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return invalid("log_format", "must be `text` or `json`".into());
        }
        if let Some(nats) = &self.nats_url
            && (nats.trim().is_empty() || nats.contains(char::is_whitespace))
        {
            return invalid(
                "nats_url",
                "must be a URL such as nats://127.0.0.1:4222".into(),
            );
        }
        if let Some(schema) = &self.database_schema {
            let ok = !schema.is_empty()
                && schema.len() <= 50
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return invalid(
                    "database_schema",
                    "must be 1 to 50 lower-case letters, digits or `_`".into(),
                );
            }
        }
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !token_ok(&self.nats_stream) {
            return invalid("nats_stream", "must be letters, digits, `_` or `-`".into());
        }
        if self
            .nats_subject_prefix
            .split('.')
            .any(|part| !token_ok(part))
        {
            return invalid(
                "nats_subject_prefix",
                "must be dot-separated tokens of letters, digits, `_` or `-`".into(),
            );
        }
        if self.database_max_connections == 0 {
            return invalid("database_max_connections", "must be at least 1".into());
        }
        if !(1..=16).contains(&self.database_append_lanes) {
            return invalid("database_append_lanes", "must be 1 to 16".into());
        }
        if self.max_event_bytes == 0 {
            return invalid("max_event_bytes", "must be at least 1".into());
        }
        if self.max_batch == 0 || self.max_batch > charter_commands::store::HARD_MAX_BATCH {
            return invalid(
                "max_batch",
                format!("must be 1 to {}", charter_commands::store::HARD_MAX_BATCH),
            );
        }
        if let Some(key) = &self.signing_key
            && key.0.len() < 32
        {
            return invalid("signing_key", "must be at least 32 characters".into());
        }
        if self.data_dir.trim().is_empty() {
            return invalid("data_dir", "must name a directory".into());
        }
        if self.max_body_bytes < 1024 {
            return invalid("max_body_bytes", "must be at least 1024".into());
        }
        if self.workers == 0 || self.workers > 1024 {
            return invalid("workers", "must be 1 to 1024".into());
        }
        Ok(())
    }

    /// The folder tools' secrets are read from.
    pub fn secrets_path(&self) -> std::path::PathBuf {
        match &self.secrets_dir {
            Some(dir) => dir.into(),
            None => std::path::Path::new(&self.data_dir).join("secrets"),
        }
    }

    /// The task queue's JetStream stream and subject, beside the events'.
    pub fn task_stream(&self) -> (String, String) {
        let subject = match self.nats_subject_prefix.strip_suffix(".events") {
            Some(base) => format!("{base}.tasks"),
            None => format!("{}-tasks", self.nats_subject_prefix),
        };
        (format!("{}_TASKS", self.nats_stream), subject)
    }

    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    /// The store options this configuration asks for.
    pub fn store_options(&self) -> charter_commands::store::StoreOptions {
        charter_commands::store::StoreOptions {
            limits: charter_commands::StoreLimits {
                max_event_bytes: self.max_event_bytes,
                max_batch: self.max_batch,
            },
            schema: self.database_schema.clone(),
            max_connections: self.database_max_connections,
            append_lanes: self.database_append_lanes,
            ..Default::default()
        }
    }

    /// The database URL with any password masked, for logs.
    pub fn database_url_redacted(&self) -> String {
        redact_url(&self.database_url)
    }
}

/// Masks the password of a `scheme://user:password@host/…` URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return its own error type.
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_server() {
        let config = Config::default();
        assert_eq!(config.database_url, "sqlite://charter.db");
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert!(config.nats_url.is_none());
        config.validate().unwrap();
    }

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "charter.toml",
                "listen = \"127.0.0.1:9000\"\nlog = \"debug\"",
            )?;
            jail.set_env("CHARTER_LOG", "warn");
            jail.set_env("CHARTER_SERVER", "http://elsewhere");
            let config = Config::load(
                Some(Path::new("charter.toml")),
                &Overrides {
                    database_url: Some("postgres://u:secret@db/charter".into()),
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(config.listen, "127.0.0.1:9000");
            assert_eq!(config.log, "warn");
            assert_eq!(config.database_url, "postgres://u:secret@db/charter");
            assert_eq!(
                config.database_url_redacted(),
                "postgres://u:***@db/charter"
            );
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CHARTER_LISTEN", "nowhere");
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("`listen`"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("CHARTER_MAX_BATCH", "lots");
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.to_lowercase().contains("max_batch"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "lisen = \"127.0.0.1:1\"")?;
            let err = Config::load(Some(Path::new("bad.toml")), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("lisen"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("CHARTER_DATABASE_URL", "mysql://x");
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("`database_url`"), "{err}");
            Ok(())
        });
        let err = Config::load(Some(Path::new("/no/such/file.toml")), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}

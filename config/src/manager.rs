//! The seed's `ConfigManager`: per-service and per-dependency views resolved from [`Settings`],
//! so a service asks for what it needs instead of knowing which sections hold it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ConfigError;
use crate::settings::{REDACTED, Settings, redact_url};

/// Names [`ConfigManager::service_config`] accepts; `api` is the seed's name for the gateway.
pub const SERVICE_NAMES: &[&str] = &[
    "training",
    "model",
    "websocket",
    "monitoring",
    "gateway",
    "api",
    "discovery",
    "event_bus",
];

/// What the seed reported as an actor's mailbox size. ractor mailboxes are unbounded, so this
/// is informational for actors without a queue of their own.
pub const ACTOR_MAILBOX_CAPACITY: usize = 1024;

/// Read-only views over validated [`Settings`].
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigManager {
    settings: Settings,
}

/// Timeouts and queue size for one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The canonical name (`gateway` when asked for `api`).
    pub name: String,
    /// How long a caller waits for this service to answer one request.
    pub request_timeout: Duration,
    /// Informational: the bound of the service's own queues where it has any.
    pub mailbox_capacity: usize,
    /// How long the monitoring service waits for this service's health answer.
    pub health_check_timeout: Duration,
}

/// Where job and model metadata live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseConfig {
    pub kind: DatabaseKind,
    pub max_connections: u32,
    pub connect_timeout: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    /// A single-node database file; created when missing.
    Sqlite { path: PathBuf },
    /// A shared database for a cluster; `url` as configured, credentials included.
    Postgres { url: String },
}

impl fmt::Debug for DatabaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            Self::Postgres { url } => f
                .debug_struct("Postgres")
                .field("url", &redact_url(url))
                .finish(),
        }
    }
}

/// How events leave this process, if they do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageBrokerConfig {
    pub kind: BrokerKind,
    /// Bound of each local subscriber's queue; a slow subscriber loses events beyond it.
    pub subscriber_queue_capacity: usize,
    pub connect_timeout: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub enum BrokerKind {
    /// No broker: the event bus only reaches subscribers in this process.
    InProcess,
    /// Redis pub/sub on `channel`, envelopes signed with `cluster_secret`.
    Redis {
        url: String,
        channel: String,
        cluster_secret: String,
    },
}

impl fmt::Debug for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InProcess => f.write_str("InProcess"),
            Self::Redis { url, channel, .. } => f
                .debug_struct("Redis")
                .field("url", &redact_url(url))
                .field("channel", channel)
                .field("cluster_secret", &REDACTED)
                .finish(),
        }
    }
}

impl ConfigManager {
    /// Expects settings that passed [`Settings::validate`] ([`Settings::load`] does that).
    pub fn new(settings: Settings) -> Self {
        Self { settings }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The view for one service; `name` is one of [`SERVICE_NAMES`], in any case.
    pub fn service_config(&self, name: &str) -> Result<ServiceConfig, ConfigError> {
        let settings = &self.settings;
        let actor_call_timeout = settings.node.actor_call_timeout();
        let (canonical, request_timeout, mailbox_capacity) =
            match name.to_ascii_lowercase().as_str() {
                "training" => ("training", actor_call_timeout, ACTOR_MAILBOX_CAPACITY),
                "model" => ("model", actor_call_timeout, ACTOR_MAILBOX_CAPACITY),
                "monitoring" => ("monitoring", actor_call_timeout, ACTOR_MAILBOX_CAPACITY),
                "discovery" => ("discovery", actor_call_timeout, ACTOR_MAILBOX_CAPACITY),
                // These two hold a bounded queue per subscriber or connection.
                "websocket" => (
                    "websocket",
                    actor_call_timeout,
                    settings.broker.subscriber_queue_capacity,
                ),
                "event_bus" => (
                    "event_bus",
                    actor_call_timeout,
                    settings.broker.subscriber_queue_capacity,
                ),
                "gateway" | "api" => (
                    "gateway",
                    settings.gateway.request_timeout(),
                    ACTOR_MAILBOX_CAPACITY,
                ),
                _ => {
                    return Err(ConfigError::UnknownService {
                        name: name.to_owned(),
                        known: SERVICE_NAMES.iter().map(|s| (*s).to_owned()).collect(),
                    });
                }
            };
        Ok(ServiceConfig {
            name: canonical.to_owned(),
            request_timeout,
            mailbox_capacity,
            health_check_timeout: settings.monitoring.health_check_timeout(),
        })
    }

    /// The database to connect to: `database.url` when set, else the SQLite file in the data
    /// directory.
    pub fn database_config(&self) -> DatabaseConfig {
        let database = &self.settings.database;
        let kind = match database.url.as_deref() {
            None => DatabaseKind::Sqlite {
                path: self.settings.sqlite_path(),
            },
            Some(url) if url.starts_with("sqlite:") => DatabaseKind::Sqlite {
                path: PathBuf::from(sqlite_url_path(url)),
            },
            Some(url) => DatabaseKind::Postgres {
                url: url.to_owned(),
            },
        };
        DatabaseConfig {
            kind,
            max_connections: database.max_connections,
            connect_timeout: database.connect_timeout(),
        }
    }

    /// The broker to bridge the event bus to, if any.
    pub fn message_broker_config(&self) -> MessageBrokerConfig {
        let broker = &self.settings.broker;
        let kind = match &broker.url {
            None => BrokerKind::InProcess,
            Some(url) => BrokerKind::Redis {
                url: url.clone(),
                channel: broker.channel.clone(),
                // Validation guarantees a secret whenever a URL is set.
                cluster_secret: broker.cluster_secret.clone().unwrap_or_default(),
            },
        };
        MessageBrokerConfig {
            kind,
            subscriber_queue_capacity: broker.subscriber_queue_capacity,
            connect_timeout: broker.connect_timeout(),
        }
    }
}

impl From<Settings> for ConfigManager {
    fn from(settings: Settings) -> Self {
        Self::new(settings)
    }
}

/// The file part of `sqlite:path`, `sqlite://path` or `sqlite:path?mode=rwc`; connection
/// options after `?` are dropped because the storage crate sets its own.
pub(crate) fn sqlite_url_path(url: &str) -> &str {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    rest.split_once('?').map_or(rest, |(path, _)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_url_paths() {
        assert_eq!(sqlite_url_path("sqlite:grok.db"), "grok.db");
        assert_eq!(sqlite_url_path("sqlite://grok.db"), "grok.db");
        assert_eq!(sqlite_url_path("sqlite:///var/grok.db"), "/var/grok.db");
        assert_eq!(sqlite_url_path("sqlite:grok.db?mode=rwc"), "grok.db");
        assert_eq!(sqlite_url_path("sqlite:"), "");
    }

    #[test]
    fn views_do_not_leak_secrets_in_debug() {
        let mut settings = Settings::default();
        settings.broker.url = Some("redis://:pw-in-url@redis".to_owned());
        settings.broker.cluster_secret = Some("s3cr3t-s3cr3t-s3cr3t".to_owned());
        settings.database.url = Some("postgres://app:db-password@db/grok".to_owned());
        let manager = ConfigManager::new(settings);
        let debug = format!(
            "{:?} {:?}",
            manager.message_broker_config(),
            manager.database_config()
        );
        for secret in ["pw-in-url", "s3cr3t", "db-password"] {
            assert!(!debug.contains(secret), "{secret} leaked in {debug}");
        }
    }
}

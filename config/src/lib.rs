//! Typed, layered, validated settings for a grokforge node.
//!
//! [`Settings::load`] starts from built-in defaults, merges a TOML file over them, then
//! `GROKFORGE__SECTION__KEY` variables over that (`GROKFORGE__GATEWAY__BIND=127.0.0.1:0`; keys
//! are case-insensitive, `__` separates levels), and finally runs [`Settings::validate`], which
//! reports every problem at once. Unknown keys are errors in the file and in the environment
//! alike, and every error names the key (`gateway.bind`), what was expected, and where the value
//! came from. The crate never reads the process environment: the caller passes it in, so the
//! binary decides what the node sees and tests stay hermetic.
//!
//! [`ConfigManager`] offers the seed's views over the settings: per-service timeouts
//! ([`ConfigManager::service_config`]) and the resolved database and message-broker choices.

pub mod crashpoint;
mod error;
mod load;
mod manager;
mod settings;
mod validate;

pub use error::{ConfigError, ValidationProblem};
pub use load::{ENV_PREFIX, ENV_SEPARATOR};
pub use manager::{
    ACTOR_MAILBOX_CAPACITY, BrokerKind, ConfigManager, DatabaseConfig, DatabaseKind,
    MessageBrokerConfig, SERVICE_NAMES, ServiceConfig,
};
pub use settings::{
    ALERT_RULES, ALERT_SEVERITIES, AlertRuleSettings, BrokerSettings, DatabaseSettings,
    DiscoverySettings, GatewaySettings, MonitoringSettings, NodeSettings, Role, Settings,
    StorageSettings, TokenSettings, TrainingSettings, WebhookSettings,
};
pub use validate::MIN_CLUSTER_SECRET_BYTES;

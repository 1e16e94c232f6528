//! The settings tree: one struct per section, with the built-in defaults.
//!
//! Durations are stored as integer milliseconds (`_ms`) because that is what a person writes in
//! a TOML file or an environment variable; every such field has a helper named without the
//! suffix that returns a [`Duration`], so code never multiplies by hand.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// All settings of one node. Build it with [`Settings::load`], which layers defaults, a TOML file
/// and the environment, then validates the result.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub node: NodeSettings,
    pub gateway: GatewaySettings,
    pub broker: BrokerSettings,
    pub database: DatabaseSettings,
    pub storage: StorageSettings,
    pub training: TrainingSettings,
    pub monitoring: MonitoringSettings,
    pub discovery: DiscoverySettings,
}

impl Settings {
    /// The directory holding everything this node writes unless told otherwise.
    pub fn data_dir(&self) -> &Path {
        &self.node.data_dir
    }

    /// Where model artifacts (checkpoints, exports) are stored.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.storage
            .artifacts_dir
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("artifacts"))
    }

    /// The SQLite database file used when no database URL is configured.
    pub fn sqlite_path(&self) -> PathBuf {
        self.node.data_dir.join("grokforge.sqlite3")
    }
}

/// Identity of the node and how its supervisor treats failing children.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// `None` lets the binary generate an id at boot.
    pub id: Option<String>,
    pub name: String,
    pub data_dir: PathBuf,
    pub shutdown_timeout_ms: u64,
    /// How long boot waits for configured dependencies (broker, database) before giving up.
    pub boot_timeout_ms: u64,
    /// OTP semantics: more than `restart_intensity` restarts within `restart_period_ms`
    /// escalates to the parent instead of restarting again.
    pub restart_intensity: u32,
    pub restart_period_ms: u64,
    pub restart_backoff_initial_ms: u64,
    pub restart_backoff_max_ms: u64,
    pub actor_call_timeout_ms: u64,
    /// The URL other nodes and clients reach this node's HTTP API at (discovery publishes
    /// it); default `http://<gateway.bind>` as bound.
    pub advertise_url: Option<String>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            id: None,
            name: "grokforge-node".to_owned(),
            data_dir: PathBuf::from("./data"),
            shutdown_timeout_ms: 10_000,
            boot_timeout_ms: 30_000,
            restart_intensity: 5,
            restart_period_ms: 10_000,
            restart_backoff_initial_ms: 100,
            restart_backoff_max_ms: 5_000,
            actor_call_timeout_ms: 2_000,
            advertise_url: None,
        }
    }
}

impl NodeSettings {
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn boot_timeout(&self) -> Duration {
        Duration::from_millis(self.boot_timeout_ms)
    }

    pub fn restart_period(&self) -> Duration {
        Duration::from_millis(self.restart_period_ms)
    }

    pub fn restart_backoff_initial(&self) -> Duration {
        Duration::from_millis(self.restart_backoff_initial_ms)
    }

    pub fn restart_backoff_max(&self) -> Duration {
        Duration::from_millis(self.restart_backoff_max_ms)
    }

    pub fn actor_call_timeout(&self) -> Duration {
        Duration::from_millis(self.actor_call_timeout_ms)
    }
}

/// The HTTP/WebSocket front door.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    pub bind: SocketAddr,
    pub request_timeout_ms: u64,
    pub max_body_bytes: u64,
    /// Serve `/metrics` without a token (for a scraper on a trusted network).
    pub metrics_open: bool,
    /// Bearer tokens. When empty, the node generates an admin token on first start and keeps
    /// it in `<data_dir>/admin-token` (mode 0600).
    pub tokens: Vec<TokenSettings>,
    /// Frames queued for one WebSocket client; a client that lets it fill is disconnected.
    pub ws_queue_capacity: u64,
    /// Open WebSocket connections per node; more are refused with 503.
    pub ws_max_connections: u64,
    /// Topics one WebSocket connection may subscribe to at once.
    pub ws_max_subscriptions: u64,
    /// Largest client frame (message) accepted on a WebSocket.
    pub ws_max_message_bytes: u64,
    /// How often the server pings a WebSocket client; one silent for two intervals is reaped.
    pub ws_ping_interval_ms: u64,
    /// Kernel send buffer of each accepted connection (`SO_SNDBUF`); 0 leaves the kernel's
    /// auto-tuning, which lets one slow client hold up to `net.ipv4.tcp_wmem` (4 MiB) of frames.
    pub socket_send_buffer_bytes: u64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)),
            request_timeout_ms: 5_000,
            max_body_bytes: 1_048_576,
            metrics_open: false,
            tokens: Vec::new(),
            ws_queue_capacity: 1_024,
            ws_max_connections: 10_000,
            ws_max_subscriptions: 32,
            ws_max_message_bytes: 65_536,
            ws_ping_interval_ms: 15_000,
            socket_send_buffer_bytes: 0,
        }
    }
}

impl GatewaySettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn ws_ping_interval(&self) -> Duration {
        Duration::from_millis(self.ws_ping_interval_ms)
    }
}

/// A bearer token and what it may do.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    pub token: String,
    pub role: Role,
}

// Settings end up in logs (`{:?}` at boot); a token must not.
impl fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSettings")
            .field("token", &REDACTED)
            .field("role", &self.role)
            .finish()
    }
}

/// What a token holder may do: `admin` everything, `user` start and cancel training and manage
/// models, `read` only look.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
    Read,
}

/// The cluster message broker. Without a URL, events stay inside this process.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// `redis://` or `rediss://`; `None` runs the in-process bus only.
    pub url: Option<String>,
    pub channel: String,
    /// Key for signing envelopes between nodes; required with `url`.
    pub cluster_secret: Option<String>,
    pub subscriber_queue_capacity: usize,
    pub connect_timeout_ms: u64,
    /// Envelopes kept for the cluster while Redis is unreachable; past it the oldest go first.
    pub outbox_capacity: usize,
    /// How often the bridge sends itself a heartbeat through the channel.
    pub heartbeat_interval_ms: u64,
    /// A subscription that has not brought the bridge's own heartbeat back for this long is
    /// wedged: the broker turns degraded and the bridge reconnects.
    pub heartbeat_timeout_ms: u64,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: None,
            channel: "grokforge:events".to_owned(),
            cluster_secret: None,
            subscriber_queue_capacity: 1024,
            connect_timeout_ms: 5_000,
            outbox_capacity: 10_000,
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 5_000,
        }
    }
}

impl BrokerSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }
}

impl fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("channel", &self.channel)
            .field(
                "cluster_secret",
                &self.cluster_secret.as_ref().map(|_| REDACTED),
            )
            .field("subscriber_queue_capacity", &self.subscriber_queue_capacity)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("outbox_capacity", &self.outbox_capacity)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("heartbeat_timeout_ms", &self.heartbeat_timeout_ms)
            .finish()
    }
}

/// The metadata database. Without a URL, a SQLite file in the data directory.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://`, `postgresql://` or `sqlite:`.
    pub url: Option<String>,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 8,
            connect_timeout_ms: 5_000,
        }
    }
}

impl DatabaseSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

/// Where files go.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// `None` means `<data_dir>/artifacts`.
    pub artifacts_dir: Option<PathBuf>,
    /// Largest dataset (`POST /datasets`) accepted; a bigger upload is refused with 413 as
    /// soon as it passes this, and its partial file is deleted.
    pub max_dataset_bytes: u64,
    /// Bound on the prepared-data cache (`<artifacts>/cache`): past it, the entries used least
    /// recently are evicted, never one that a running job uses.
    pub max_cache_bytes: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            artifacts_dir: None,
            max_dataset_bytes: 1 << 30,
            max_cache_bytes: 10 << 30,
        }
    }
}

/// How this node runs training jobs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSettings {
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub max_concurrent_jobs: usize,
    pub lease_duration_ms: u64,
    pub max_attempts: u32,
    pub checkpoint_every_steps: u64,
    /// Upper bound on `TrainingProgress` events per job, so a fast model cannot flood the bus.
    pub progress_events_per_second: u32,
    /// Fail a job at the first step whose loss is NaN or infinite, naming the step and the
    /// value, before that step touches the weights (its last checkpoint stays as it was).
    /// `false` trains on to the end; the `training_diverged` alert still fires.
    pub stop_on_divergence: bool,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        Self {
            device: "cpu".to_owned(),
            max_concurrent_jobs: 1,
            lease_duration_ms: 30_000,
            max_attempts: 3,
            checkpoint_every_steps: 500,
            progress_events_per_second: 10,
            stop_on_divergence: true,
        }
    }
}

impl TrainingSettings {
    pub fn lease_duration(&self) -> Duration {
        Duration::from_millis(self.lease_duration_ms)
    }
}

/// Health checks over the node's services, alert rules and where alerts go.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringSettings {
    pub health_check_interval_ms: u64,
    pub health_check_timeout_ms: u64,
    /// Changes to the built-in alert rules, one entry per rule (by `rule` name).
    pub alerts: Vec<AlertRuleSettings>,
    /// HTTP endpoints every alert at or above their `min_severity` is POSTed to.
    pub webhooks: Vec<WebhookSettings>,
}

/// The alert rules there are (`[[monitoring.alerts]]` `rule = …`).
pub const ALERT_RULES: [&str; 9] = [
    "job_failed",
    "training_diverged",
    "job_stalled",
    "service_unhealthy",
    "breaker_open",
    "restart_storm",
    "events_dropped",
    "disk_low",
    "node_left",
];

/// Alert severities, lowest first.
pub const ALERT_SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

/// One rule's settings; what is left out keeps the built-in value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleSettings {
    /// One of [`ALERT_RULES`].
    pub rule: String,
    pub enabled: Option<bool>,
    /// How long the condition must hold before the alert fires.
    pub for_ms: Option<u64>,
    /// One of [`ALERT_SEVERITIES`].
    pub severity: Option<String>,
    /// The rule's number: the loss multiple (`training_diverged`), seconds without progress
    /// (`job_stalled`), restarts per minute (`restart_storm`), drops per second
    /// (`events_dropped`), the free share (`disk_low`).
    pub threshold: Option<f64>,
    /// For incidents seen in one event (`job_failed`, `training_diverged`, `node_left`,
    /// `restart_storm`): how long the alert stays firing.
    pub keep_firing_for_ms: Option<u64>,
}

/// A webhook for alerts.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// `http://` or `https://`.
    pub url: String,
    /// Key of the `X-Grokforge-Signature: sha256=<hex>` HMAC-SHA256 over the body.
    pub secret: String,
    /// Alerts below it are not sent; default `warning`.
    #[serde(default = "default_min_severity")]
    pub min_severity: String,
}

fn default_min_severity() -> String {
    "warning".to_string()
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &redact_url(&self.url))
            .field("secret", &REDACTED)
            .field("min_severity", &self.min_severity)
            .finish()
    }
}

impl Default for MonitoringSettings {
    fn default() -> Self {
        Self {
            health_check_interval_ms: 5_000,
            health_check_timeout_ms: 1_000,
            alerts: Vec::new(),
            webhooks: Vec::new(),
        }
    }
}

impl MonitoringSettings {
    pub fn health_check_interval(&self) -> Duration {
        Duration::from_millis(self.health_check_interval_ms)
    }

    pub fn health_check_timeout(&self) -> Duration {
        Duration::from_millis(self.health_check_timeout_ms)
    }
}

/// How nodes find each other.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoverySettings {
    pub heartbeat_interval_ms: u64,
    /// A node silent for this long is considered gone.
    pub ttl_ms: u64,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 2_000,
            ttl_ms: 10_000,
        }
    }
}

impl DiscoverySettings {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
}

pub(crate) const REDACTED: &str = "<redacted>";

/// Hides the password in `scheme://user:password@host/...`, which is how both Redis and
/// PostgreSQL URLs carry credentials.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    format!(
        "{}{user}:{REDACTED}{}",
        &url[..authority_start],
        &url[authority_start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/grok"),
            "postgres://app:<redacted>@db:5432/grok"
        );
        assert_eq!(
            redact_url("redis://:hunter2@redis:6379/0"),
            "redis://:<redacted>@redis:6379/0"
        );
        assert_eq!(redact_url("redis://redis:6379"), "redis://redis:6379");
        assert_eq!(redact_url("sqlite:data.db"), "sqlite:data.db");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut settings = Settings::default();
        settings.broker.url = Some("redis://:pw-in-url@localhost".to_owned());
        settings.broker.cluster_secret = Some("s3cr3t-s3cr3t-s3cr3t".to_owned());
        settings.gateway.tokens.push(TokenSettings {
            token: "tok-abcdef".to_owned(),
            role: Role::Admin,
        });
        let debug = format!("{settings:?}");
        for secret in ["pw-in-url", "s3cr3t", "tok-abcdef"] {
            assert!(!debug.contains(secret), "{secret} leaked in {debug}");
        }
        assert!(debug.contains("Admin"));
    }

    #[test]
    fn derived_paths_follow_data_dir() {
        let mut settings = Settings::default();
        settings.node.data_dir = PathBuf::from("/var/lib/grokforge");
        assert_eq!(settings.data_dir(), Path::new("/var/lib/grokforge"));
        assert_eq!(
            settings.artifacts_dir(),
            Path::new("/var/lib/grokforge/artifacts")
        );
        assert_eq!(
            settings.sqlite_path(),
            Path::new("/var/lib/grokforge/grokforge.sqlite3")
        );
        settings.storage.artifacts_dir = Some(PathBuf::from("/mnt/artifacts"));
        assert_eq!(settings.artifacts_dir(), Path::new("/mnt/artifacts"));
    }
}

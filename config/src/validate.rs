//! Checks that go beyond types: ranges, URL schemes, and fields that constrain each other.
//!
//! Every check runs, so one attempt at starting a node reports everything wrong with its
//! configuration instead of one problem per restart.

use std::collections::BTreeSet;

use crate::error::{ConfigError, ValidationProblem};
use crate::settings::Settings;

/// A cluster secret shorter than this is too easy to guess for an HMAC key.
pub const MIN_CLUSTER_SECRET_BYTES: usize = 16;

const BROKER_SCHEMES: &[&str] = &["redis://", "rediss://"];
const DATABASE_SCHEMES: &[&str] = &["postgres://", "postgresql://", "sqlite:"];

impl Settings {
    /// Checks the settings as a whole; the error lists every problem found, each with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        self.validate_node(&mut problems);
        self.validate_gateway(&mut problems);
        self.validate_broker(&mut problems);
        self.validate_database(&mut problems);
        self.validate_storage(&mut problems);
        self.validate_training(&mut problems);
        self.validate_monitoring(&mut problems);
        self.validate_discovery(&mut problems);
        problems.into_result()
    }

    fn validate_node(&self, problems: &mut Problems) {
        let node = &self.node;
        if let Some(id) = &node.id {
            problems.non_blank("node.id", id);
        }
        problems.non_blank("node.name", &node.name);
        if let Some(url) = &node.advertise_url {
            problems.scheme("node.advertise_url", url, &["http://", "https://"]);
        }
        if node.data_dir.as_os_str().is_empty() {
            problems.push("node.data_dir", "must not be empty");
        }
        problems.positive("node.shutdown_timeout_ms", node.shutdown_timeout_ms);
        problems.positive("node.boot_timeout_ms", node.boot_timeout_ms);
        problems.positive("node.restart_period_ms", node.restart_period_ms);
        problems.positive(
            "node.restart_backoff_initial_ms",
            node.restart_backoff_initial_ms,
        );
        if node.restart_backoff_max_ms < node.restart_backoff_initial_ms {
            problems.push(
                "node.restart_backoff_max_ms",
                format!(
                    "must be at least node.restart_backoff_initial_ms ({}), found {}",
                    node.restart_backoff_initial_ms, node.restart_backoff_max_ms
                ),
            );
        }
        problems.positive("node.actor_call_timeout_ms", node.actor_call_timeout_ms);
    }

    fn validate_gateway(&self, problems: &mut Problems) {
        let gateway = &self.gateway;
        problems.positive("gateway.request_timeout_ms", gateway.request_timeout_ms);
        problems.positive("gateway.max_body_bytes", gateway.max_body_bytes);
        problems.positive("gateway.ws_queue_capacity", gateway.ws_queue_capacity);
        problems.positive("gateway.ws_max_connections", gateway.ws_max_connections);
        problems.positive("gateway.ws_max_subscriptions", gateway.ws_max_subscriptions);
        problems.positive("gateway.ws_max_message_bytes", gateway.ws_max_message_bytes);
        problems.positive("gateway.ws_ping_interval_ms", gateway.ws_ping_interval_ms);
        let mut seen = BTreeSet::new();
        for (index, token) in gateway.tokens.iter().enumerate() {
            let key = format!("gateway.tokens[{index}].token");
            if token.token.trim().is_empty() {
                problems.push(key, "must not be empty");
            } else if !seen.insert(token.token.as_str()) {
                // Never echo the token itself: errors end up in logs.
                problems.push(key, "repeats an earlier token");
            }
        }
    }

    fn validate_broker(&self, problems: &mut Problems) {
        let broker = &self.broker;
        if let Some(url) = &broker.url {
            problems.scheme("broker.url", url, BROKER_SCHEMES);
            match &broker.cluster_secret {
                None => problems.push(
                    "broker.cluster_secret",
                    "is required when broker.url is set: it signs events between nodes",
                ),
                Some(secret) if secret.len() < MIN_CLUSTER_SECRET_BYTES => problems.push(
                    "broker.cluster_secret",
                    format!(
                        "must be at least {MIN_CLUSTER_SECRET_BYTES} bytes, found {}",
                        secret.len()
                    ),
                ),
                Some(_) => {}
            }
        }
        problems.non_blank("broker.channel", &broker.channel);
        problems.at_least_one(
            "broker.subscriber_queue_capacity",
            broker.subscriber_queue_capacity as u64,
        );
        problems.positive("broker.connect_timeout_ms", broker.connect_timeout_ms);
        problems.at_least_one("broker.outbox_capacity", broker.outbox_capacity as u64);
        problems.positive("broker.heartbeat_interval_ms", broker.heartbeat_interval_ms);
        // The timeout must leave room for at least one heartbeat to come back.
        if broker.heartbeat_timeout_ms <= broker.heartbeat_interval_ms {
            problems.push(
                "broker.heartbeat_timeout_ms",
                format!(
                    "must be greater than broker.heartbeat_interval_ms ({}), found {}",
                    broker.heartbeat_interval_ms, broker.heartbeat_timeout_ms
                ),
            );
        }
    }

    fn validate_database(&self, problems: &mut Problems) {
        let database = &self.database;
        if let Some(url) = &database.url {
            problems.scheme("database.url", url, DATABASE_SCHEMES);
            if url.starts_with("sqlite:") && crate::manager::sqlite_url_path(url).is_empty() {
                problems.push("database.url", "names no SQLite file after `sqlite:`");
            }
        }
        problems.at_least_one("database.max_connections", database.max_connections.into());
        problems.positive("database.connect_timeout_ms", database.connect_timeout_ms);
    }

    fn validate_storage(&self, problems: &mut Problems) {
        if let Some(dir) = &self.storage.artifacts_dir
            && dir.as_os_str().is_empty()
        {
            problems.push("storage.artifacts_dir", "must not be empty when set");
        }
        problems.positive("storage.max_dataset_bytes", self.storage.max_dataset_bytes);
        problems.positive("storage.max_cache_bytes", self.storage.max_cache_bytes);
    }

    fn validate_training(&self, problems: &mut Problems) {
        let training = &self.training;
        if !is_valid_device(&training.device) {
            problems.push(
                "training.device",
                format!("expected `cpu` or `cuda:N`, found {:?}", training.device),
            );
        }
        problems.at_least_one(
            "training.max_concurrent_jobs",
            training.max_concurrent_jobs as u64,
        );
        problems.positive("training.lease_duration_ms", training.lease_duration_ms);
        problems.at_least_one("training.max_attempts", training.max_attempts.into());
        problems.at_least_one(
            "training.checkpoint_every_steps",
            training.checkpoint_every_steps,
        );
        problems.at_least_one(
            "training.progress_events_per_second",
            training.progress_events_per_second.into(),
        );
    }

    fn validate_monitoring(&self, problems: &mut Problems) {
        let monitoring = &self.monitoring;
        problems.positive(
            "monitoring.health_check_interval_ms",
            monitoring.health_check_interval_ms,
        );
        problems.positive(
            "monitoring.health_check_timeout_ms",
            monitoring.health_check_timeout_ms,
        );
        let mut named = std::collections::BTreeSet::new();
        for (index, rule) in monitoring.alerts.iter().enumerate() {
            let key = format!("monitoring.alerts[{index}]");
            if !crate::settings::ALERT_RULES.contains(&rule.rule.as_str()) {
                problems.push(
                    format!("{key}.rule"),
                    format!(
                        "unknown rule `{}`; the rules are {}",
                        rule.rule,
                        crate::settings::ALERT_RULES.join(", ")
                    ),
                );
            } else if !named.insert(rule.rule.as_str()) {
                problems.push(
                    format!("{key}.rule"),
                    format!("`{}` is configured twice", rule.rule),
                );
            }
            if let Some(severity) = &rule.severity
                && !crate::settings::ALERT_SEVERITIES.contains(&severity.as_str())
            {
                problems.push(
                    format!("{key}.severity"),
                    format!(
                        "must be one of {}, found `{severity}`",
                        crate::settings::ALERT_SEVERITIES.join(", ")
                    ),
                );
            }
            if let Some(threshold) = rule.threshold
                && !(threshold.is_finite() && threshold >= 0.0)
            {
                problems.push(
                    format!("{key}.threshold"),
                    format!("must be ≥ 0, found {threshold}"),
                );
            }
        }
        for (index, webhook) in monitoring.webhooks.iter().enumerate() {
            let key = format!("monitoring.webhooks[{index}]");
            problems.scheme(
                &format!("{key}.url"),
                &webhook.url,
                &["http://", "https://"],
            );
            problems.non_blank(&format!("{key}.secret"), &webhook.secret);
            if !crate::settings::ALERT_SEVERITIES.contains(&webhook.min_severity.as_str()) {
                problems.push(
                    format!("{key}.min_severity"),
                    format!(
                        "must be one of {}, found `{}`",
                        crate::settings::ALERT_SEVERITIES.join(", "),
                        webhook.min_severity
                    ),
                );
            }
        }
        // A check that may outlive its interval would overlap the next one.
        if monitoring.health_check_timeout_ms >= monitoring.health_check_interval_ms {
            problems.push(
                "monitoring.health_check_timeout_ms",
                format!(
                    "must be less than monitoring.health_check_interval_ms ({}), found {}",
                    monitoring.health_check_interval_ms, monitoring.health_check_timeout_ms
                ),
            );
        }
    }

    fn validate_discovery(&self, problems: &mut Problems) {
        let discovery = &self.discovery;
        problems.positive(
            "discovery.heartbeat_interval_ms",
            discovery.heartbeat_interval_ms,
        );
        // With a TTL no longer than the heartbeat, a healthy node would expire between beats.
        if discovery.ttl_ms <= discovery.heartbeat_interval_ms {
            problems.push(
                "discovery.ttl_ms",
                format!(
                    "must be greater than discovery.heartbeat_interval_ms ({}), found {}",
                    discovery.heartbeat_interval_ms, discovery.ttl_ms
                ),
            );
        }
    }
}

/// `cpu`, or `cuda:N` with N a device index.
fn is_valid_device(device: &str) -> bool {
    if device == "cpu" {
        return true;
    }
    device
        .strip_prefix("cuda:")
        .is_some_and(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Default)]
struct Problems(Vec<ValidationProblem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationProblem::new(key, message));
    }

    fn non_blank(&mut self, key: &str, value: &str) {
        if value.trim().is_empty() {
            self.push(key, "must not be empty");
        }
    }

    fn positive(&mut self, key: &str, value: u64) {
        if value == 0 {
            self.push(key, "must be greater than 0");
        }
    }

    fn at_least_one(&mut self, key: &str, value: u64) {
        if value == 0 {
            self.push(key, "must be at least 1, found 0");
        }
    }

    fn scheme(&mut self, key: &str, url: &str, schemes: &[&str]) {
        if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
            let expected: Vec<String> = schemes.iter().map(|s| format!("`{s}`")).collect();
            self.push(
                key,
                format!(
                    "must start with {}, found {:?}",
                    expected.join(" or "),
                    crate::settings::redact_url(url)
                ),
            );
        }
    }

    fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Validation(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_keys(settings: &Settings) -> Vec<String> {
        match settings.validate() {
            Ok(()) => Vec::new(),
            Err(ConfigError::Validation(problems)) => {
                problems.into_iter().map(|problem| problem.key).collect()
            }
            Err(other) => panic!("expected a validation error, got {other}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(problem_keys(&Settings::default()), Vec::<String>::new());
    }

    #[test]
    fn devices() {
        for good in ["cpu", "cuda:0", "cuda:12"] {
            assert!(is_valid_device(good), "{good}");
        }
        for bad in ["", "gpu", "cuda", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            assert!(!is_valid_device(bad), "{bad}");
        }
    }

    #[test]
    fn broker_secret_must_be_long_enough() {
        let mut settings = Settings::default();
        settings.broker.url = Some("redis://localhost:6379".to_owned());
        settings.broker.cluster_secret = Some("short".to_owned());
        let error = settings.validate().unwrap_err().to_string();
        assert!(error.contains("broker.cluster_secret"), "{error}");
        assert!(error.contains("at least 16 bytes"), "{error}");
        assert!(!error.contains("short"), "secret echoed: {error}");

        settings.broker.cluster_secret = Some("0123456789abcdef".to_owned());
        settings.validate().unwrap();
    }

    #[test]
    fn a_secret_without_a_broker_is_harmless() {
        let mut settings = Settings::default();
        settings.broker.cluster_secret = Some("x".to_owned());
        settings.validate().unwrap();
    }

    #[test]
    fn url_schemes_are_checked_without_leaking_passwords() {
        let mut settings = Settings::default();
        settings.broker.url = Some("http://u:hunter2@redis".to_owned());
        settings.broker.cluster_secret = Some("0123456789abcdef".to_owned());
        settings.database.url = Some("mysql://u:hunter2@db/grok".to_owned());
        let error = settings.validate().unwrap_err().to_string();
        assert!(error.contains("`broker.url` must start with `redis://` or `rediss://`"));
        assert!(error.contains("`database.url` must start with `postgres://`"));
        assert!(!error.contains("hunter2"), "{error}");

        for url in [
            "postgres://db/grok",
            "postgresql://db/grok",
            "sqlite:grok.db",
            "sqlite://grok.db",
        ] {
            settings.broker.url = None;
            settings.database.url = Some(url.to_owned());
            settings.validate().unwrap();
        }
        settings.database.url = Some("sqlite:".to_owned());
        assert_eq!(problem_keys(&settings), ["database.url"]);
    }

    #[test]
    fn tokens_must_be_present_and_distinct() {
        use crate::settings::{Role, TokenSettings};
        let mut settings = Settings::default();
        let token = |token: &str, role| TokenSettings {
            token: token.to_owned(),
            role,
        };
        settings.gateway.tokens = vec![
            token("alpha", Role::Admin),
            token(" ", Role::User),
            token("alpha", Role::Read),
        ];
        assert_eq!(
            problem_keys(&settings),
            ["gateway.tokens[1].token", "gateway.tokens[2].token"]
        );
    }

    #[test]
    fn related_fields_constrain_each_other() {
        let mut settings = Settings::default();
        settings.node.restart_backoff_initial_ms = 500;
        settings.node.restart_backoff_max_ms = 100;
        settings.monitoring.health_check_timeout_ms = 5_000;
        settings.discovery.ttl_ms = 2_000;
        assert_eq!(
            problem_keys(&settings),
            [
                "node.restart_backoff_max_ms",
                "monitoring.health_check_timeout_ms",
                "discovery.ttl_ms"
            ]
        );
    }

    #[test]
    fn zero_counts_are_rejected() {
        let mut settings = Settings::default();
        settings.broker.subscriber_queue_capacity = 0;
        settings.database.max_connections = 0;
        settings.training.max_concurrent_jobs = 0;
        settings.training.max_attempts = 0;
        settings.training.checkpoint_every_steps = 0;
        assert_eq!(
            problem_keys(&settings),
            [
                "broker.subscriber_queue_capacity",
                "database.max_connections",
                "training.max_concurrent_jobs",
                "training.max_attempts",
                "training.checkpoint_every_steps",
            ]
        );
    }
}

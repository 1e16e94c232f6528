//! Loading through all three layers against real files on disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use grokforge_config::{
    BrokerKind, ConfigError, ConfigManager, DatabaseKind, Role, SERVICE_NAMES, Settings,
    ValidationProblem,
};
use tempfile::TempDir;

/// A TOML file in its own temporary directory, removed on drop.
struct ConfigFile {
    _dir: TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(contents: &str) -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("grokforge.toml");
        std::fs::write(&path, contents).expect("write config file");
        Self { _dir: dir, path }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn load_error(file: Option<&Path>, vars: &[(&str, &str)]) -> ConfigError {
    match Settings::load(file, env(vars)) {
        Ok(settings) => panic!("expected an error, loaded {settings:?}"),
        Err(error) => error,
    }
}

fn assert_contains(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
}

#[test]
fn defaults_load_and_validate() {
    let settings = Settings::load(None, no_env()).unwrap();
    assert_eq!(settings, Settings::default());
    settings.validate().unwrap();

    assert_eq!(settings.node.id, None);
    assert_eq!(settings.node.name, "grokforge-node");
    assert_eq!(settings.data_dir(), Path::new("./data"));
    assert_eq!(settings.node.shutdown_timeout(), Duration::from_secs(10));
    assert_eq!(settings.node.restart_intensity, 5);
    assert_eq!(settings.node.restart_period(), Duration::from_secs(10));
    assert_eq!(
        settings.node.restart_backoff_initial(),
        Duration::from_millis(100)
    );
    assert_eq!(settings.node.restart_backoff_max(), Duration::from_secs(5));
    assert_eq!(settings.node.actor_call_timeout(), Duration::from_secs(2));
    assert_eq!(
        settings.gateway.bind,
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(settings.gateway.request_timeout(), Duration::from_secs(5));
    assert_eq!(settings.gateway.max_body_bytes, 1_048_576);
    assert!(!settings.gateway.metrics_open);
    assert!(settings.gateway.tokens.is_empty());
    assert_eq!(settings.broker.url, None);
    assert_eq!(settings.broker.channel, "grokforge:events");
    assert_eq!(settings.broker.subscriber_queue_capacity, 1024);
    assert_eq!(settings.broker.connect_timeout(), Duration::from_secs(5));
    assert_eq!(settings.database.url, None);
    assert_eq!(settings.database.max_connections, 8);
    assert_eq!(settings.database.connect_timeout(), Duration::from_secs(5));
    assert_eq!(settings.artifacts_dir(), Path::new("./data/artifacts"));
    assert_eq!(
        settings.sqlite_path(),
        Path::new("./data/grokforge.sqlite3")
    );
    assert_eq!(settings.training.device, "cpu");
    assert_eq!(settings.training.max_concurrent_jobs, 1);
    assert_eq!(settings.training.lease_duration(), Duration::from_secs(30));
    assert_eq!(settings.training.max_attempts, 3);
    assert_eq!(settings.training.checkpoint_every_steps, 500);
    assert_eq!(settings.training.progress_events_per_second, 10);
    assert_eq!(
        settings.monitoring.health_check_interval(),
        Duration::from_secs(5)
    );
    assert_eq!(
        settings.monitoring.health_check_timeout(),
        Duration::from_secs(1)
    );
    assert_eq!(
        settings.discovery.heartbeat_interval(),
        Duration::from_secs(2)
    );
    assert_eq!(settings.discovery.ttl(), Duration::from_secs(10));
}

#[test]
fn file_overrides_defaults() {
    let file = ConfigFile::new(
        r#"
        [node]
        id = "node-a"
        data_dir = "/srv/grokforge"

        [gateway]
        bind = "0.0.0.0:9000"
        metrics_open = true
        tokens = [
            { token = "admin-token", role = "admin" },
            { token = "reader-token", role = "read" },
        ]

        [storage]
        artifacts_dir = "/mnt/artifacts"

        [training]
        device = "cuda:1"
        max_concurrent_jobs = 4
        "#,
    );
    let settings = Settings::load(Some(file.path()), no_env()).unwrap();

    assert_eq!(settings.node.id.as_deref(), Some("node-a"));
    assert_eq!(settings.data_dir(), Path::new("/srv/grokforge"));
    assert_eq!(
        settings.sqlite_path(),
        Path::new("/srv/grokforge/grokforge.sqlite3")
    );
    assert_eq!(settings.artifacts_dir(), Path::new("/mnt/artifacts"));
    assert_eq!(
        settings.gateway.bind,
        "0.0.0.0:9000".parse::<SocketAddr>().unwrap()
    );
    assert!(settings.gateway.metrics_open);
    let roles: Vec<Role> = settings.gateway.tokens.iter().map(|t| t.role).collect();
    assert_eq!(roles, [Role::Admin, Role::Read]);
    assert_eq!(settings.training.device, "cuda:1");
    assert_eq!(settings.training.max_concurrent_jobs, 4);
    // Keys the file does not mention keep their defaults.
    assert_eq!(settings.node.name, "grokforge-node");
    assert_eq!(settings.gateway.request_timeout_ms, 5_000);
    assert_eq!(settings.training.max_attempts, 3);
}

#[test]
fn env_overrides_file() {
    let file = ConfigFile::new(
        r#"
        [gateway]
        bind = "0.0.0.0:9000"
        request_timeout_ms = 7000

        [training]
        max_concurrent_jobs = 4
        "#,
    );
    let settings = Settings::load(
        Some(file.path()),
        env(&[
            ("GROKFORGE__GATEWAY__BIND", "127.0.0.1:0"),
            ("GROKFORGE__TRAINING__MAX_CONCURRENT_JOBS", "2"),
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap();

    assert_eq!(
        settings.gateway.bind,
        "127.0.0.1:0".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(settings.training.max_concurrent_jobs, 2);
    // The file still wins over the defaults where the environment is silent.
    assert_eq!(settings.gateway.request_timeout_ms, 7_000);
}

#[test]
fn env_keys_are_case_insensitive_and_nested() {
    let settings = Settings::load(
        None,
        env(&[
            ("grokforge__node__name", "lower"),
            ("GrokForge__Discovery__TTL_MS", "30000"),
            ("GROKFORGE__gateway__METRICS_OPEN", "true"),
            ("GROKFORGE__BROKER__URL", "redis://localhost:6379"),
            // Digits only, yet a string field: kept verbatim rather than parsed as a number.
            ("GROKFORGE__BROKER__CLUSTER_SECRET", "0000111122223333"),
            (
                "GROKFORGE__GATEWAY__TOKENS",
                r#"[{token = "t1", role = "user"}]"#,
            ),
        ]),
    )
    .unwrap();

    assert_eq!(settings.node.name, "lower");
    assert_eq!(settings.discovery.ttl_ms, 30_000);
    assert!(settings.gateway.metrics_open);
    assert_eq!(
        settings.broker.url.as_deref(),
        Some("redis://localhost:6379")
    );
    assert_eq!(
        settings.broker.cluster_secret.as_deref(),
        Some("0000111122223333")
    );
    assert_eq!(settings.gateway.tokens.len(), 1);
    assert_eq!(settings.gateway.tokens[0].token, "t1");
    assert_eq!(settings.gateway.tokens[0].role, Role::User);
}

#[test]
fn unknown_key_in_file_is_named_with_its_file() {
    let file = ConfigFile::new("[gateway]\nbnd = \"127.0.0.1:1\"\n");
    let error = load_error(Some(file.path()), &[]);
    assert!(
        matches!(&error, ConfigError::UnknownKey { key, .. } if key == "gateway.bnd"),
        "{error:?}"
    );
    let text = error.to_string();
    assert_contains(
        &text,
        &[
            "`gateway.bnd`",
            &file.path().display().to_string(),
            "`bind`",
        ],
    );
}

#[test]
fn unknown_section_in_file_is_rejected() {
    let file = ConfigFile::new("[gatewy]\nbind = \"127.0.0.1:1\"\n");
    let text = load_error(Some(file.path()), &[]).to_string();
    assert_contains(&text, &["`gatewy`", "`gateway`"]);
}

#[test]
fn unknown_key_inside_a_token_is_rejected() {
    let file = ConfigFile::new(
        "[gateway]\ntokens = [{ token = \"t\", role = \"admin\", scope = \"all\" }]\n",
    );
    let text = load_error(Some(file.path()), &[]).to_string();
    assert_contains(&text, &["gateway.tokens.0.scope"]);
}

#[test]
fn unknown_env_key_names_the_variable() {
    let error = load_error(None, &[("GROKFORGE__TRAINING__MAX_JOBS", "2")]);
    assert!(
        matches!(&error, ConfigError::UnknownKey { key, .. } if key == "training.max_jobs"),
        "{error:?}"
    );
    assert_contains(
        &error.to_string(),
        &[
            "`training.max_jobs`",
            "GROKFORGE__TRAINING__MAX_JOBS",
            "`max_concurrent_jobs`",
        ],
    );
}

#[test]
fn unknown_env_section_names_the_variable_as_written() {
    let text = load_error(None, &[("grokforge__trainng__device", "cpu")]).to_string();
    assert_contains(&text, &["`trainng`", "grokforge__trainng__device"]);
}

#[test]
fn wrong_type_in_file_names_key_expectation_and_file() {
    let file = ConfigFile::new("[training]\nmax_concurrent_jobs = \"many\"\n");
    let error = load_error(Some(file.path()), &[]);
    assert!(
        matches!(&error, ConfigError::InvalidValue { key, .. } if key == "training.max_concurrent_jobs"),
        "{error:?}"
    );
    assert_contains(
        &error.to_string(),
        &[
            "`training.max_concurrent_jobs`",
            "expected a non-negative integer (usize), found string \"many\"",
            &file.path().display().to_string(),
        ],
    );
}

#[test]
fn wrong_type_in_env_names_key_and_variable() {
    let text = load_error(None, &[("GROKFORGE__GATEWAY__BIND", "localhost")]).to_string();
    assert_contains(
        &text,
        &[
            "`gateway.bind`",
            "GROKFORGE__GATEWAY__BIND",
            "socket address",
        ],
    );

    let text = load_error(None, &[("GROKFORGE__GATEWAY__METRICS_OPEN", "yes")]).to_string();
    assert_contains(
        &text,
        &["`gateway.metrics_open`", "GROKFORGE__GATEWAY__METRICS_OPEN"],
    );
}

#[test]
fn error_inside_an_env_value_names_the_variable() {
    let text = load_error(
        None,
        &[(
            "GROKFORGE__GATEWAY__TOKENS",
            r#"[{token = "t", role = "root"}]"#,
        )],
    )
    .to_string();
    assert_contains(
        &text,
        &[
            "`gateway.tokens.0.role`",
            "environment variable `GROKFORGE__GATEWAY__TOKENS`",
            "found `root`",
        ],
    );
}

#[test]
fn unknown_role_lists_the_roles() {
    let file = ConfigFile::new("[gateway]\ntokens = [{ token = \"t\", role = \"root\" }]\n");
    let text = load_error(Some(file.path()), &[]).to_string();
    assert_contains(
        &text,
        &[
            "gateway.tokens.0.role",
            "`root`",
            "`admin`",
            "`user`",
            "`read`",
        ],
    );
}

#[test]
fn validation_reports_every_problem_with_its_key() {
    let file = ConfigFile::new(
        r#"
        [training]
        device = "gpu"
        max_concurrent_jobs = 0

        [monitoring]
        health_check_interval_ms = 1000
        health_check_timeout_ms = 1000
        "#,
    );
    let error = load_error(
        Some(file.path()),
        &[("GROKFORGE__DISCOVERY__TTL_MS", "1000")],
    );
    let ConfigError::Validation(problems) = &error else {
        panic!("expected a validation error, got {error:?}");
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "training.device",
            "training.max_concurrent_jobs",
            "monitoring.health_check_timeout_ms",
            "discovery.ttl_ms",
        ]
    );
    assert_contains(
        &error.to_string(),
        &[
            "`training.device` expected `cpu` or `cuda:N`, found \"gpu\"",
            "`training.max_concurrent_jobs` must be at least 1",
            "`monitoring.health_check_timeout_ms` must be less than",
            "`discovery.ttl_ms` must be greater than",
        ],
    );
}

#[test]
fn broker_url_without_secret_is_rejected() {
    let error = load_error(
        None,
        &[("GROKFORGE__BROKER__URL", "redis://127.0.0.1:6379")],
    );
    assert_eq!(
        error,
        ConfigError::Validation(vec![ValidationProblem::new(
            "broker.cluster_secret",
            "is required when broker.url is set: it signs events between nodes",
        )])
    );
    assert_contains(&error.to_string(), &["broker.cluster_secret", "required"]);
}

#[test]
fn missing_explicit_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let error = load_error(Some(&path), &[]);
    assert!(
        matches!(&error, ConfigError::File { path: p, .. } if *p == path),
        "{error:?}"
    );
    assert_contains(&error.to_string(), &[&path.display().to_string()]);
}

#[test]
fn malformed_file_names_the_path() {
    let file = ConfigFile::new("[gateway\nbind = ");
    let error = load_error(Some(file.path()), &[]);
    assert!(matches!(&error, ConfigError::File { .. }), "{error:?}");
    let text = error.to_string();
    assert_contains(&text, &[&file.path().display().to_string()]);
    assert!(!text.contains('\n'), "{text:?}");
}

#[test]
fn invalid_env_variable_name_is_rejected() {
    let text = load_error(None, &[("GROKFORGE__GATEWAY__", "x")]).to_string();
    assert_contains(&text, &["`GROKFORGE__GATEWAY__`"]);
}

#[test]
fn every_error_renders_on_one_line() {
    let file = ConfigFile::new("[training]\nmax_concurrent_jobs = \"many\"\n");
    let errors = [
        load_error(Some(file.path()), &[]),
        load_error(None, &[("GROKFORGE__X__Y", "1")]),
        load_error(None, &[("GROKFORGE__TRAINING__MAX_ATTEMPTS", "0")]),
        ConfigManager::new(Settings::default())
            .service_config("nope")
            .unwrap_err(),
    ];
    for error in errors {
        let text = error.to_string();
        assert!(!text.contains('\n'), "{text:?}");
    }
}

#[test]
fn service_config_for_every_known_name() {
    let mut settings = Settings::default();
    settings.node.actor_call_timeout_ms = 1_500;
    settings.gateway.request_timeout_ms = 9_000;
    settings.broker.subscriber_queue_capacity = 64;
    settings.monitoring.health_check_timeout_ms = 700;
    let manager = ConfigManager::new(settings);

    for name in SERVICE_NAMES {
        let config = manager.service_config(name).unwrap();
        assert_eq!(config.health_check_timeout, Duration::from_millis(700));
        let expected_name = if *name == "api" { "gateway" } else { name };
        assert_eq!(config.name, expected_name);
        match expected_name {
            "gateway" => assert_eq!(config.request_timeout, Duration::from_secs(9)),
            _ => assert_eq!(config.request_timeout, Duration::from_millis(1_500)),
        }
        match expected_name {
            "websocket" | "event_bus" => assert_eq!(config.mailbox_capacity, 64),
            _ => assert!(config.mailbox_capacity > 0),
        }
    }
    assert_eq!(manager.service_config("Training").unwrap().name, "training");
}

#[test]
fn unknown_service_lists_known_ones() {
    let manager = ConfigManager::new(Settings::default());
    let error = manager.service_config("scheduler").unwrap_err();
    assert!(
        matches!(&error, ConfigError::UnknownService { name, .. } if name == "scheduler"),
        "{error:?}"
    );
    assert_contains(
        &error.to_string(),
        &[
            "`scheduler`",
            "`training`",
            "`gateway`",
            "`api`",
            "`event_bus`",
        ],
    );
}

#[test]
fn database_config_defaults_to_sqlite_under_data_dir() {
    let settings = Settings::load(
        None,
        env(&[("GROKFORGE__NODE__DATA_DIR", "/var/lib/grokforge")]),
    )
    .unwrap();
    let config = ConfigManager::new(settings).database_config();
    assert_eq!(
        config.kind,
        DatabaseKind::Sqlite {
            path: PathBuf::from("/var/lib/grokforge/grokforge.sqlite3")
        }
    );
    assert_eq!(config.max_connections, 8);
    assert_eq!(config.connect_timeout, Duration::from_secs(5));
}

#[test]
fn database_config_uses_postgres_when_url_set() {
    let file = ConfigFile::new(
        "[database]\nurl = \"postgres://grok:pw@db:5432/grok\"\nmax_connections = 20\n",
    );
    let settings = Settings::load(Some(file.path()), no_env()).unwrap();
    let config = ConfigManager::new(settings).database_config();
    assert_eq!(
        config.kind,
        DatabaseKind::Postgres {
            url: "postgres://grok:pw@db:5432/grok".to_owned()
        }
    );
    assert_eq!(config.max_connections, 20);
}

#[test]
fn database_config_accepts_an_explicit_sqlite_url() {
    let settings = Settings::load(
        None,
        env(&[("GROKFORGE__DATABASE__URL", "sqlite:///tmp/grok.db?mode=rwc")]),
    )
    .unwrap();
    assert_eq!(
        ConfigManager::new(settings).database_config().kind,
        DatabaseKind::Sqlite {
            path: PathBuf::from("/tmp/grok.db")
        }
    );
}

#[test]
fn message_broker_config_in_process_by_default() {
    let manager = ConfigManager::new(Settings::load(None, no_env()).unwrap());
    let config = manager.message_broker_config();
    assert_eq!(config.kind, BrokerKind::InProcess);
    assert_eq!(config.subscriber_queue_capacity, 1024);
    assert_eq!(config.connect_timeout, Duration::from_secs(5));
}

#[test]
fn message_broker_config_redis_when_url_set() {
    let settings = Settings::load(
        None,
        env(&[
            ("GROKFORGE__BROKER__URL", "rediss://redis:6380/0"),
            ("GROKFORGE__BROKER__CHANNEL", "grok:test"),
            ("GROKFORGE__BROKER__CLUSTER_SECRET", "correct horse battery"),
            ("GROKFORGE__BROKER__CONNECT_TIMEOUT_MS", "250"),
        ]),
    )
    .unwrap();
    let manager = ConfigManager::new(settings);
    let config = manager.message_broker_config();
    assert_eq!(
        config.kind,
        BrokerKind::Redis {
            url: "rediss://redis:6380/0".to_owned(),
            channel: "grok:test".to_owned(),
            cluster_secret: "correct horse battery".to_owned(),
        }
    );
    assert_eq!(config.connect_timeout, Duration::from_millis(250));
    assert_eq!(manager.settings().broker.channel, "grok:test");
}

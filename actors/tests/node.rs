//! A whole node booted in-process against a real SQLite file (and real Redis / PostgreSQL
//! where the test says so): health from real checks, restarts, escalation, shutdown order.

use std::sync::atomic::Ordering;
use std::time::Duration;

use grokforge_actors::bus::{EventBusMessage, SubscribeRequest, Subscription};
use grokforge_actors::health::HealthReport;
use grokforge_actors::services::monitoring::MonitoringServiceMessage;
use grokforge_actors::services::training::TrainingServiceMessage;
use grokforge_actors::{BootError, Event, HealthState, Node, Topic, names};
use grokforge_config::Settings;

fn settings(data_dir: &std::path::Path) -> Settings {
    let mut settings = Settings::default();
    settings.node.data_dir = data_dir.to_path_buf();
    settings.node.restart_backoff_initial_ms = 10;
    settings.node.restart_backoff_max_ms = 20;
    settings
}

fn cpu() -> grokforge_training_core::Device {
    grokforge_training_core::parse_device("cpu").unwrap()
}

fn redis_url() -> String {
    std::env::var("GROKFORGE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn check_now(node: &Node) -> HealthReport {
    node.directory
        .call::<MonitoringServiceMessage, _, _>(
            names::MONITORING_SERVICE,
            MonitoringServiceMessage::CheckNow,
            Duration::from_secs(5),
        )
        .await
        .expect("monitoring answers")
}

async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, deadline: Duration, mut condition: F) {
    let started = tokio::time::Instant::now();
    while !condition().await {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_node_boots_and_its_health_comes_from_real_checks() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(settings(dir.path()), cpu(), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        dir.path().join("grokforge.sqlite3").exists(),
        "the SQLite file is created in the data dir"
    );

    // The gateway is not running: the api is unhealthy and says why, the rest is healthy.
    let report = check_now(&node).await;
    assert_eq!(report.services["api"].status, HealthState::Unhealthy);
    assert!(
        report.services["api"]
            .reason
            .as_deref()
            .unwrap()
            .contains("gateway")
    );
    for service in ["training", "model", "websocket", "monitoring", "discovery"] {
        assert_eq!(
            report.services[service].status,
            HealthState::Healthy,
            "{service}: {:?}",
            report.services[service]
        );
    }
    for dependency in ["database", "file_system", "broker"] {
        assert_eq!(
            report.dependencies[dependency].status,
            HealthState::Healthy,
            "{dependency}"
        );
    }

    node.api_listening.store(true, Ordering::Release);
    assert_eq!(check_now(&node).await.status, HealthState::Healthy);

    // The data directory stops being writable: file_system fails, model degrades.
    let data_dir = dir.path().to_path_buf();
    std::fs::remove_dir_all(&data_dir).unwrap();
    std::fs::write(&data_dir, b"not a directory").unwrap();
    let report = check_now(&node).await;
    assert_eq!(
        report.dependencies["file_system"].status,
        HealthState::Unhealthy
    );
    assert_eq!(report.services["model"].status, HealthState::Degraded);
    assert!(
        report.services["model"]
            .reason
            .as_deref()
            .unwrap()
            .contains("file_system is unhealthy")
    );
    std::fs::remove_file(&data_dir).unwrap();
    std::fs::create_dir_all(&data_dir).unwrap();
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn health_changes_are_published_on_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(settings(dir.path()), cpu(), Duration::from_secs(10))
        .await
        .unwrap();
    let request = SubscribeRequest {
        subscriber: "test".into(),
        topics: vec![Topic::Health],
        capacity: Some(256),
    };
    let mut subscription: Subscription = node
        .directory
        .call::<EventBusMessage, _, _>(
            names::EVENT_BUS,
            |reply| EventBusMessage::Subscribe(request, reply),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    check_now(&node).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let envelope = tokio::time::timeout_at(deadline, subscription.receiver.recv())
            .await
            .expect("a health event")
            .unwrap();
        if let Event::ServiceHealthChanged { service, to, .. } = &envelope.event
            && service == "api"
        {
            assert_eq!(*to, HealthState::Unhealthy);
            assert_eq!(envelope.source_service, names::MONITORING_SERVICE);
            assert_eq!(envelope.source_node, node.node_id);
            break;
        }
    }
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_crashed_service_is_restarted_and_a_storm_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = settings(dir.path());
    config.node.restart_intensity = 1;
    let mut node = Node::start(config, cpu(), Duration::from_secs(10))
        .await
        .unwrap();

    let first = node
        .directory
        .cell(names::TRAINING_SERVICE)
        .unwrap()
        .get_id();
    assert!(node.directory.cast(
        names::TRAINING_SERVICE,
        TrainingServiceMessage::Crash("first".into())
    ));
    wait_until(
        "training_service restarted",
        Duration::from_secs(5),
        async || {
            node.directory
                .cell(names::TRAINING_SERVICE)
                .is_some_and(|c| c.get_id() != first)
        },
    )
    .await;
    assert_eq!(
        node.metrics
            .actor_restarts_total
            .with_label_values(&[names::TRAINING_SERVICE])
            .get(),
        1
    );
    assert!(
        node.metrics
            .render()
            .contains("grokforge_actor_restarts_total{actor=\"training_service\"} 1")
    );

    assert!(node.directory.cast(
        names::TRAINING_SERVICE,
        TrainingServiceMessage::Crash("second".into())
    ));
    let escalation = tokio::time::timeout(Duration::from_secs(5), node.stopped())
        .await
        .expect("node stops");
    let escalation = escalation.expect("an escalation, not a clean stop");
    assert_eq!(escalation.actor, names::TRAINING_SERVICE);
    assert!(
        escalation.last_failure.contains("second"),
        "{}",
        escalation.last_failure
    );
    assert!(
        node.directory.cell(names::EVENT_BUS).is_none(),
        "the other services were stopped"
    );
}

#[tokio::test]
async fn a_node_keeps_its_generated_id_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let first = Node::start(settings(dir.path()), cpu(), Duration::from_secs(10))
        .await
        .unwrap();
    let id = first.node_id.clone();
    first.shutdown(Duration::from_secs(5)).await;
    let second = Node::start(settings(dir.path()), cpu(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(second.node_id, id);
    second.shutdown(Duration::from_secs(5)).await;

    let mut configured = settings(dir.path());
    configured.node.id = Some("configured-node".into());
    let third = Node::start(configured, cpu(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(third.node_id, "configured-node");
    third.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_runs_in_reverse_boot_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(settings(dir.path()), cpu(), Duration::from_secs(10))
        .await
        .unwrap();
    let order = node.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        order,
        [
            names::DISCOVERY,
            names::WEBSOCKET_HUB,
            names::MONITORING_SERVICE,
            names::TRAINING_SERVICE,
            names::DATASET_SERVICE,
            names::MODEL_SERVICE,
            names::EVENT_BUS
        ]
    );
}

#[tokio::test]
async fn a_configured_redis_is_checked_and_a_missing_one_fails_boot_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = settings(dir.path());
    config.broker.url = Some(redis_url());
    config.broker.cluster_secret = Some("a-test-cluster-secret".into());
    config.broker.channel = format!("grokforge:test:{}", uuid::Uuid::now_v7().simple());
    let node = Node::start(config.clone(), cpu(), Duration::from_secs(10))
        .await
        .unwrap();
    // Healthy once the bridge has subscribed and heard its own heartbeat back.
    wait_until("a healthy broker", Duration::from_secs(10), async || {
        check_now(&node).await.dependencies["broker"].status == HealthState::Healthy
    })
    .await;
    node.shutdown(Duration::from_secs(5)).await;

    config.broker.url = Some("redis://127.0.0.1:1".into());
    let started = std::time::Instant::now();
    let error = Node::start(config, cpu(), Duration::from_millis(800))
        .await
        .err()
        .expect("boot fails");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gives up at the deadline"
    );
    assert!(
        matches!(&error, BootError::DependencyUnavailable { dependency, .. } if dependency.contains("broker")),
        "{error}"
    );
}

#[tokio::test]
async fn a_configured_postgres_is_used_and_a_missing_one_fails_boot_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = settings(dir.path());
    // A schema of its own, so parallel and repeated runs never share tables.
    let schema = grokforge_storage::testing::TestDatabase::postgres(
        &std::env::var("GROKFORGE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| grokforge_storage::testing::DEFAULT_POSTGRES_URL.into()),
    )
    .await
    .unwrap();
    config.database.url = Some(schema.postgres_url().unwrap().to_string());
    let node = Node::start(config.clone(), cpu(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(node.database.kind(), "postgres");
    assert_eq!(
        check_now(&node).await.dependencies["database"].status,
        HealthState::Healthy
    );
    node.shutdown(Duration::from_secs(5)).await;

    schema.cleanup().await;
    config.database.url = Some("postgres://postgres@127.0.0.1:1/test".into());
    config.database.connect_timeout_ms = 200;
    let error = Node::start(config, cpu(), Duration::from_millis(800))
        .await
        .err()
        .expect("boot fails");
    assert!(
        matches!(&error, BootError::DependencyUnavailable { dependency, .. } if dependency.contains("database")),
        "{error}"
    );
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
}

#[tokio::test]
async fn the_service_discovery_api_sees_every_node_of_the_cluster() {
    use grokforge_actors::services::discovery::ServiceDiscovery;
    let channel = format!("grokforge:test:{}", uuid::Uuid::now_v7().simple());
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for index in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut config = settings(dir.path());
        config.node.id = Some(format!("discovery-{index}"));
        config.broker.url = Some(redis_url());
        config.broker.channel = channel.clone();
        config.broker.cluster_secret = Some("a-test-cluster-secret".into());
        config.discovery.heartbeat_interval_ms = 100;
        config.discovery.ttl_ms = 1_000;
        config.monitoring.health_check_interval_ms = 100;
        let node = Node::start(config, cpu(), Duration::from_secs(10))
            .await
            .unwrap();
        let _ = node
            .api_address
            .set(format!("http://127.0.0.1:{}", 9000 + index));
        nodes.push(node);
        dirs.push(dir);
    }
    let discovery = ServiceDiscovery {
        directory: nodes[0].directory.clone(),
        timeout: Duration::from_secs(2),
    };
    discovery.register_service().unwrap();
    wait_until(
        "both nodes' model service",
        Duration::from_secs(10),
        async || {
            let mut urls = discovery.discover_service("model").await.unwrap();
            urls.sort();
            urls == ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]
        },
    )
    .await;
    let states = discovery.health_check("model").await.unwrap();
    let ids: Vec<&str> = states.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["discovery-0", "discovery-1"]);
    assert!(
        discovery
            .discover_service("no-such-service")
            .await
            .unwrap()
            .is_empty()
    );

    // A clean shutdown removes the node at once (its TTL would take a second).
    let second = nodes.pop().unwrap();
    second.shutdown(Duration::from_secs(5)).await;
    wait_until("one node left", Duration::from_millis(900), async || {
        discovery.discover_service("model").await.unwrap() == ["http://127.0.0.1:9000"]
    })
    .await;
    nodes.pop().unwrap().shutdown(Duration::from_secs(5)).await;
}

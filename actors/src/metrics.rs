//! The node's Prometheus metrics, and the internal events that move them.
//!
//! Each node owns one [`NodeMetrics`] (not a process-global registry), so two nodes in one test
//! process never share counters. Following vector's `internal_events`, a thing that happens is
//! one typed value whose `emit` writes both the log line and the metric, so the two never drift.
//! Label values come from closed sets (actor names, event kinds, drop reasons): no unbounded
//! label ever reaches the registry.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::events::HealthState;

#[derive(Clone)]
pub struct NodeMetrics {
    registry: Registry,
    pub actor_restarts_total: IntCounterVec,
    pub events_published_total: IntCounterVec,
    pub events_dropped_total: IntCounterVec,
    pub bus_subscribers: IntGauge,
    pub service_health: IntGaugeVec,
    /// Job state transitions on this node, by the state entered.
    pub jobs_total: IntCounterVec,
    pub training_steps_total: IntCounter,
    pub training_loss: Gauge,
    pub training_accuracy: Gauge,
    pub training_step_duration_seconds: Histogram,
    pub checkpoints_written_total: IntCounter,
    /// Jobs whose prepared data came from the shared cache (no tokenisation).
    pub dataset_cache_hits_total: IntCounter,
    /// Jobs that had to prepare (tokenise) their data, then cached it.
    pub dataset_cache_misses_total: IntCounter,
    /// Prepared-data cache entries evicted to stay within `storage.max_cache_bytes`.
    pub dataset_cache_evictions_total: IntCounter,
    /// HTTP requests by method, route template (`/jobs/{id}`) and status code.
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    /// Open WebSocket connections.
    pub websocket_connections: IntGauge,
    /// Frames written to WebSocket clients (events and control frames).
    pub websocket_messages_sent_total: IntCounter,
    /// WebSocket connections closed, by reason (`client`, `slow_consumer`, `ping_timeout`, …).
    pub websocket_disconnects_total: IntCounterVec,
    /// Per write to a WebSocket client, how long its oldest event frame had waited since the
    /// hub queued it: the node's own share of event latency (queues, scheduling, the write).
    pub websocket_delivery_seconds: Histogram,
    /// Circuit breaker state by breaker: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// Registered models by phase, refreshed when `/metrics` is scraped.
    pub models: IntGaugeVec,
    /// Envelopes through the Redis bridge, by direction (`published`, `received`).
    pub cluster_messages_total: IntCounterVec,
    /// Frames the Redis bridge dropped, by reason (`own_echo`, `duplicate`, `unsigned`,
    /// `bad_signature`, `malformed`, `other_cluster`, `newer_schema`, `outbox_full`).
    pub cluster_messages_dropped_total: IntCounterVec,
    /// Live nodes of the cluster as discovery sees them (1 without a broker).
    pub cluster_nodes: IntGauge,
    /// Alerts firing now, by rule and severity (those this node speaks for).
    pub alerts_firing: IntGaugeVec,
    /// Alert webhook deliveries by outcome (`delivered`, `failed`, `dropped`).
    pub webhook_deliveries_total: IntCounterVec,
}

impl NodeMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let actor_restarts_total = IntCounterVec::new(
            Opts::new(
                "grokforge_actor_restarts_total",
                "Actor restarts by the node supervisor",
            ),
            &["actor"],
        )
        .expect("static metric definition");
        let events_published_total = IntCounterVec::new(
            Opts::new(
                "grokforge_events_published_total",
                "Events published on the local bus",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let events_dropped_total = IntCounterVec::new(
            Opts::new(
                "grokforge_events_dropped_total",
                "Events or subscribers dropped, by reason",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let bus_subscribers = IntGauge::new(
            "grokforge_bus_subscribers",
            "Current local event bus subscribers",
        )
        .expect("static metric definition");
        let service_health = IntGaugeVec::new(
            Opts::new(
                "grokforge_service_health",
                "Service health: 0 healthy, 1 degraded, 2 unhealthy",
            ),
            &["service"],
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new("grokforge_build_info", "Build information; always 1"),
            &["version"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let jobs_total = IntCounterVec::new(
            Opts::new(
                "grokforge_jobs_total",
                "Job state transitions on this node, by the state entered",
            ),
            &["status"],
        )
        .expect("static metric definition");
        let training_steps_total = IntCounter::new(
            "grokforge_training_steps_total",
            "Optimizer steps taken by this node's jobs",
        )
        .expect("static metric definition");
        let training_loss = Gauge::new(
            "grokforge_training_loss",
            "Training loss of the latest reported step",
        )
        .expect("static metric definition");
        let training_accuracy = Gauge::new(
            "grokforge_training_accuracy",
            "Training accuracy of the latest reported step",
        )
        .expect("static metric definition");
        let training_step_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "grokforge_training_step_duration_seconds",
                "Duration of one optimizer step",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).expect("static buckets")),
        )
        .expect("static metric definition");
        let checkpoints_written_total = IntCounter::new(
            "grokforge_checkpoints_written_total",
            "Training checkpoints written",
        )
        .expect("static metric definition");
        let counter =
            |name: &str, help: &str| IntCounter::new(name, help).expect("static metric definition");
        let dataset_cache_hits_total = counter(
            "grokforge_dataset_cache_hits_total",
            "Jobs whose prepared data came from the prepared-data cache",
        );
        let dataset_cache_misses_total = counter(
            "grokforge_dataset_cache_misses_total",
            "Jobs that prepared (tokenised) their data and cached it",
        );
        let dataset_cache_evictions_total = counter(
            "grokforge_dataset_cache_evictions_total",
            "Prepared-data cache entries evicted, least recently used first",
        );

        let http_requests_total = IntCounterVec::new(
            Opts::new(
                "grokforge_http_requests_total",
                "HTTP requests by method, route template and status",
            ),
            &["method", "route", "status"],
        )
        .expect("static metric definition");
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "grokforge_http_request_duration_seconds",
                "HTTP request duration by method and route template",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).expect("static buckets")),
            &["method", "route"],
        )
        .expect("static metric definition");
        let websocket_connections = IntGauge::new(
            "grokforge_websocket_connections",
            "Open WebSocket connections",
        )
        .expect("static metric definition");
        let websocket_messages_sent_total = IntCounter::new(
            "grokforge_websocket_messages_sent_total",
            "Frames written to WebSocket clients",
        )
        .expect("static metric definition");
        let websocket_disconnects_total = IntCounterVec::new(
            Opts::new(
                "grokforge_websocket_disconnects_total",
                "WebSocket connections closed, by reason",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let websocket_delivery_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "grokforge_websocket_delivery_seconds",
                "Per write to a WebSocket client, time from the hub queuing its oldest event frame \
                 to the write completing",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )
        .expect("static metric definition");
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "grokforge_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            ),
            &["breaker"],
        )
        .expect("static metric definition");
        let models = IntGaugeVec::new(
            Opts::new("grokforge_models", "Registered models by phase"),
            &["phase"],
        )
        .expect("static metric definition");

        let cluster_messages_total = IntCounterVec::new(
            Opts::new(
                "grokforge_cluster_messages_total",
                "Envelopes through the Redis bridge, by direction",
            ),
            &["direction"],
        )
        .expect("static metric definition");
        let cluster_messages_dropped_total = IntCounterVec::new(
            Opts::new(
                "grokforge_cluster_messages_dropped_total",
                "Frames the Redis bridge dropped, by reason",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let cluster_nodes = IntGauge::new(
            "grokforge_cluster_nodes",
            "Live nodes of the cluster as discovery sees them",
        )
        .expect("static metric definition");

        let alerts_firing = IntGaugeVec::new(
            Opts::new(
                "grokforge_alerts_firing",
                "Alerts firing now, by rule and severity",
            ),
            &["rule", "severity"],
        )
        .expect("static metric definition");
        let webhook_deliveries_total = IntCounterVec::new(
            Opts::new(
                "grokforge_webhook_deliveries_total",
                "Alert webhook deliveries by outcome",
            ),
            &["outcome"],
        )
        .expect("static metric definition");

        for collector in [
            Box::new(actor_restarts_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(alerts_firing.clone()),
            Box::new(webhook_deliveries_total.clone()),
            Box::new(cluster_messages_total.clone()),
            Box::new(cluster_messages_dropped_total.clone()),
            Box::new(cluster_nodes.clone()),
            Box::new(events_published_total.clone()),
            Box::new(events_dropped_total.clone()),
            Box::new(bus_subscribers.clone()),
            Box::new(service_health.clone()),
            Box::new(build_info),
            Box::new(jobs_total.clone()),
            Box::new(training_steps_total.clone()),
            Box::new(training_loss.clone()),
            Box::new(training_accuracy.clone()),
            Box::new(training_step_duration_seconds.clone()),
            Box::new(checkpoints_written_total.clone()),
            Box::new(dataset_cache_hits_total.clone()),
            Box::new(dataset_cache_misses_total.clone()),
            Box::new(dataset_cache_evictions_total.clone()),
            Box::new(http_requests_total.clone()),
            Box::new(http_request_duration_seconds.clone()),
            Box::new(websocket_connections.clone()),
            Box::new(websocket_messages_sent_total.clone()),
            Box::new(websocket_disconnects_total.clone()),
            Box::new(websocket_delivery_seconds.clone()),
            Box::new(breaker_state.clone()),
            Box::new(models.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        NodeMetrics {
            registry,
            actor_restarts_total,
            events_published_total,
            events_dropped_total,
            bus_subscribers,
            service_health,
            jobs_total,
            training_steps_total,
            training_loss,
            training_accuracy,
            training_step_duration_seconds,
            checkpoints_written_total,
            dataset_cache_hits_total,
            dataset_cache_misses_total,
            dataset_cache_evictions_total,
            http_requests_total,
            http_request_duration_seconds,
            websocket_connections,
            websocket_messages_sent_total,
            websocket_disconnects_total,
            websocket_delivery_seconds,
            breaker_state,
            models,
            cluster_messages_total,
            cluster_messages_dropped_total,
            cluster_nodes,
            alerts_firing,
            webhook_deliveries_total,
        }
    }

    /// The registry, for other crates to register their own collectors and for `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The whole registry in Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }

    pub fn set_service_health(&self, service: &str, state: HealthState) {
        let value = match state {
            HealthState::Healthy => 0,
            HealthState::Degraded => 1,
            HealthState::Unhealthy => 2,
        };
        self.service_health.with_label_values(&[service]).set(value);
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A supervised actor died and is being restarted.
pub struct ActorRestarted<'a> {
    pub actor: &'a str,
    pub reason: &'a str,
    pub restarts_in_period: usize,
    pub backoff_ms: u128,
}

impl ActorRestarted<'_> {
    pub fn emit(&self, metrics: &NodeMetrics) {
        tracing::warn!(
            actor = self.actor,
            reason = self.reason,
            restarts_in_period = self.restarts_in_period,
            backoff_ms = self.backoff_ms as u64,
            "actor died; restarting"
        );
        metrics
            .actor_restarts_total
            .with_label_values(&[self.actor])
            .inc();
    }
}

/// Why the bus dropped something. A closed set, used as the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A subscriber's queue was full: the subscriber is removed, the publisher never waits.
    SlowSubscriber,
    /// A subscriber went away without unsubscribing.
    SubscriberGone,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SlowSubscriber => "slow_subscriber",
            DropReason::SubscriberGone => "subscriber_gone",
        }
    }
}

pub struct SubscriberDropped<'a> {
    pub subscriber: &'a str,
    pub reason: DropReason,
}

impl SubscriberDropped<'_> {
    pub fn emit(&self, metrics: &NodeMetrics) {
        tracing::warn!(
            subscriber = self.subscriber,
            reason = self.reason.as_str(),
            "bus subscriber dropped"
        );
        metrics
            .events_dropped_total
            .with_label_values(&[self.reason.as_str()])
            .inc();
    }
}

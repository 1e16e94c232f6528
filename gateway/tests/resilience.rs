//! The gateway's calls to actors: an actor that does not answer in time is a 503 with
//! Retry-After, repeated failures open the service's breaker (and the gateway then answers at
//! once instead of waiting), and a missing actor is waited for briefly, then a 503.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use grokforge_actors::resilience::BreakerConfig;
use grokforge_actors::services::model::ModelServiceMessage;
use grokforge_actors::{NodeMetrics, ServiceDirectory, names};
use grokforge_config::{Role, TokenSettings};
use grokforge_gateway::{Breakers, GatewayState, ListBodies, Tokens, WebSocketLimits, routes};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio_util::sync::CancellationToken;

/// A model service that takes every request and never answers (it keeps the reply ports, so
/// the caller sees a timeout rather than a dropped request).
struct Wedged;

impl Actor for Wedged {
    type Msg = ModelServiceMessage;
    type State = Vec<ModelServiceMessage>;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _arguments: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Vec::new())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        held: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        held.push(message);
        Ok(())
    }
}

const TOKEN: &str = "resilience-test-token";

fn state(directory: ServiceDirectory, metrics: NodeMetrics) -> GatewayState {
    let breaker = BreakerConfig {
        minimum_calls: 3,
        failure_rate_threshold: 0.5,
        window: Duration::from_secs(30),
        open_wait: Duration::from_secs(20),
        half_open_max_probes: 1,
    };
    GatewayState {
        node_id: "test-node".into(),
        directory,
        call_timeout: Duration::from_millis(100),
        health_timeout: Duration::from_millis(200),
        shutting_down: Arc::new(AtomicBool::new(false)),
        max_body_bytes: 1 << 20,
        artifacts_dir: std::env::temp_dir(),
        tokens: Arc::new(Tokens::new(
            &[TokenSettings {
                token: TOKEN.into(),
                role: Role::Admin,
            }],
            false,
        )),
        websocket: WebSocketLimits {
            ping_interval: Duration::from_secs(15),
            max_message_bytes: 65_536,
            max_subscriptions: 32,
        },
        breakers: Breakers::new(breaker, &metrics),
        shutdown: CancellationToken::new(),
        // A cache the stand-in services never fill: every read asks them.
        model_lists: ListBodies::new(Default::default()),
        metrics,
    }
}

async fn get_models(state: &GatewayState) -> (u16, Option<u64>, serde_json::Value, Duration) {
    let started = Instant::now();
    let response = warp::test::request()
        .path("/models")
        .header("authorization", format!("Bearer {TOKEN}"))
        .reply(&routes(state.clone()))
        .await;
    let elapsed = started.elapsed();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = serde_json::from_slice(response.body()).unwrap();
    (response.status().as_u16(), retry_after, body, elapsed)
}

#[tokio::test]
async fn a_wedged_actor_gives_503_with_retry_after_and_then_opens_its_breaker() {
    let directory = ServiceDirectory::new();
    let (actor, _handle) = Actor::spawn(None, Wedged, ()).await.unwrap();
    directory.insert(names::MODEL_SERVICE, actor.get_cell());
    let metrics = NodeMetrics::new();
    let state = state(directory, metrics.clone());

    // Closed: each call waits out the deadline, then answers 503.
    for _ in 0..3 {
        let (status, retry_after, problem, elapsed) = get_models(&state).await;
        assert_eq!(status, 503, "{problem}");
        assert_eq!(retry_after, Some(1));
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("did not answer"),
            "{problem}"
        );
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(
            elapsed < Duration::from_secs(2),
            "never a hung request: {elapsed:?}"
        );
    }

    // Open: refused at once, with the breaker's own wait as Retry-After.
    let (status, retry_after, problem, elapsed) = get_models(&state).await;
    assert_eq!(status, 503, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("stopped calling"),
        "{problem}"
    );
    assert!(
        retry_after.is_some_and(|s| (15..=20).contains(&s)),
        "{retry_after:?}"
    );
    assert!(elapsed < Duration::from_millis(50), "{elapsed:?}");
    assert_eq!(
        metrics
            .breaker_state
            .with_label_values(&[names::MODEL_SERVICE])
            .get(),
        1,
        "the breaker's state is exported"
    );
    // Other services keep their own, closed breakers.
    assert_eq!(
        metrics
            .breaker_state
            .with_label_values(&[names::TRAINING_SERVICE])
            .get(),
        0
    );
}

#[tokio::test]
async fn a_missing_actor_is_waited_for_briefly_then_503() {
    let metrics = NodeMetrics::new();
    let state = state(ServiceDirectory::new(), metrics);
    let (status, retry_after, problem, elapsed) = get_models(&state).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(retry_after, Some(1));
    assert!(
        problem["detail"].as_str().unwrap().contains("not running"),
        "{problem}"
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

//! `grokforge serve`: boot the node, start the gateway last, and stop both in reverse order
//! on SIGINT/SIGTERM or when the node's supervisor gives up.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use grokforge_actors::Node;
use grokforge_actors::resilience::BreakerConfig;
use grokforge_config::{Role, Settings, TokenSettings};
use grokforge_gateway::{Breakers, GatewayState, ListBodies, Tokens, WebSocketLimits};
use tokio_util::sync::CancellationToken;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let bind = settings.gateway.bind;
    let shutdown_timeout = settings.node.shutdown_timeout();
    let boot_timeout = settings.node.boot_timeout();
    let call_timeout = settings.node.actor_call_timeout();
    let max_body_bytes = settings.gateway.max_body_bytes;
    let artifacts_dir = settings.artifacts_dir();
    let health_timeout = settings.monitoring.health_check_timeout() * 2;

    // The training device is checked before anything starts: a node asked to train on a GPU
    // that LibTorch cannot see should say so now, not at its first job.
    let device = grokforge_training_core::parse_device(&settings.training.device)
        .with_context(|| format!("training.device = {:?}", settings.training.device))?;
    tracing::info!(backend = %grokforge_training_core::backend_description(&device), "training device");

    let mut signals = ShutdownSignals::install()?;
    let mut node = Node::start(settings, device, boot_timeout)
        .await
        .context("node failed to start")?;
    let listener = grokforge_gateway::listen(bind, node.settings.gateway.socket_send_buffer_bytes)
        .with_context(|| format!("cannot listen on {bind}"))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let _ = node.api_address.set(format!("http://{address}"));

    // Without configured tokens the node guards itself with a generated admin token, kept in
    // the data dir so a restart reuses it.
    let mut tokens = node.settings.gateway.tokens.clone();
    let admin_token = if tokens.is_empty() {
        let admin =
            grokforge_gateway::auth::load_or_generate_admin_token(&node.settings.node.data_dir)?;
        tokens.push(TokenSettings {
            token: admin.token.clone(),
            role: Role::Admin,
        });
        Some(admin)
    } else {
        None
    };
    let gateway_settings = &node.settings.gateway;
    let websocket = WebSocketLimits {
        ping_interval: gateway_settings.ws_ping_interval(),
        max_message_bytes: usize::try_from(gateway_settings.ws_max_message_bytes)
            .unwrap_or(usize::MAX),
        max_subscriptions: usize::try_from(gateway_settings.ws_max_subscriptions)
            .unwrap_or(usize::MAX),
    };
    let shutting_down = Arc::new(AtomicBool::new(false));
    let state = GatewayState {
        tokens: Arc::new(Tokens::new(&tokens, gateway_settings.metrics_open)),
        websocket,
        breakers: Breakers::new(BreakerConfig::default(), &node.metrics),
        shutdown: CancellationToken::new(),
        model_lists: ListBodies::new(node.model_lists.clone()),
        node_id: node.node_id.clone(),
        directory: node.directory.clone(),
        metrics: node.metrics.clone(),
        call_timeout,
        health_timeout,
        shutting_down: shutting_down.clone(),
        max_body_bytes,
        artifacts_dir,
    };
    let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(grokforge_gateway::serve(
        listener,
        state,
        node.api_listening.clone(),
        async {
            let _ = gateway_stopped.await;
        },
    ));
    tracing::info!(node_id = %node.node_id, %address, "node ready");
    println!("listening on http://{address}");
    // The token goes to the terminal of the person who started the node, never to the log.
    match &admin_token {
        Some(admin) if admin.generated => println!(
            "admin token (generated, saved in {}): {}",
            admin.path.display(),
            admin.token
        ),
        Some(admin) => println!("admin token: in {}", admin.path.display()),
        None => {}
    }
    let _ = std::io::stdout().flush();

    let escalation = tokio::select! {
        signal = signals.recv() => {
            tracing::info!(signal, "shutting down");
            None
        }
        escalation = node.stopped() => escalation,
    };

    // Reverse order: stop accepting, drain the gateway, then stop the services.
    shutting_down.store(true, Ordering::Release);
    let _ = stop_gateway.send(());
    if tokio::time::timeout(shutdown_timeout / 2, gateway)
        .await
        .is_err()
    {
        tracing::warn!("gateway did not drain in time");
    }
    let order = node.shutdown(shutdown_timeout / 2).await;
    tracing::info!(stopped = ?order, "node stopped");

    match escalation {
        Some(escalation) => Err(anyhow::anyhow!("node supervisor gave up: {escalation}")),
        None => Ok(()),
    }
}

/// SIGINT and SIGTERM, listened for from before the address is printed: a signal that arrives
/// right after must start a clean shutdown, not kill the process with the default action.
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    /// Resolves with the name of the first signal received.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

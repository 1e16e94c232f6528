//! Alert webhooks: every alert at or above a webhook's `min_severity` is POSTed to its URL as
//! JSON, signed with `X-Grokforge-Signature: sha256=<hex HMAC-SHA256 of the body>` under the
//! webhook's secret, and retried with jittered exponential backoff (the retry module) until it
//! is answered 2xx or the attempts run out. Outcomes are counted in
//! `grokforge_webhook_deliveries_total{outcome}`.
//!
//! Concurrency: each webhook has a task and a bounded queue of its own, so a slow or dead
//! endpoint delays nobody: not the monitoring service (which only `try_send`s), not the other
//! webhooks. A full queue drops the alert and counts it (`outcome="dropped"`).

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::events::AlertSeverity;
use crate::metrics::NodeMetrics;
use crate::resilience::{Jitter, RetryPolicy, retry};

/// Header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-grokforge-signature";

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// One webhook's sender.
#[derive(Clone)]
pub struct Webhook {
    min_severity: AlertSeverity,
    queue: mpsc::Sender<Vec<u8>>,
    metrics: NodeMetrics,
}

/// Alerts waiting per webhook.
const QUEUE: usize = 256;

impl Webhook {
    /// Starts the webhook's task; it ends when `cancel` fires.
    pub fn spawn(
        settings: &grokforge_config::WebhookSettings,
        metrics: NodeMetrics,
        cancel: CancellationToken,
    ) -> Webhook {
        let (queue, mut alerts) = mpsc::channel::<Vec<u8>>(QUEUE);
        let url = settings.url.clone();
        let secret = settings.secret.clone();
        let outcomes = metrics.webhook_deliveries_total.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("a plain HTTP client builds");
            let policy = RetryPolicy {
                max_attempts: 5,
                initial_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(5),
                multiplier: 2.0,
                jitter: Jitter::Full,
                deadline: Some(Duration::from_secs(60)),
            };
            loop {
                let body = tokio::select! {
                    _ = cancel.cancelled() => return,
                    body = alerts.recv() => match body { Some(body) => body, None => return },
                };
                let signed = signature(&secret, &body);
                let delivered = retry(
                    &policy,
                    |_: &String| true,
                    |_attempt| {
                        let request = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .header(SIGNATURE_HEADER, &signed)
                            .body(body.clone());
                        async move {
                            match request.send().await {
                                Ok(response) if response.status().is_success() => Ok(()),
                                Ok(response) => Err(format!("answered {}", response.status())),
                                Err(error) => Err(error.to_string()),
                            }
                        }
                    },
                );
                let outcome = tokio::select! {
                    _ = cancel.cancelled() => return,
                    outcome = delivered => outcome,
                };
                match outcome {
                    Ok(()) => outcomes.with_label_values(&["delivered"]).inc(),
                    Err(error) => {
                        tracing::warn!(%url, error = %error.last, "alert webhook gave up");
                        outcomes.with_label_values(&["failed"]).inc();
                    }
                }
            }
        });
        Webhook {
            min_severity: AlertSeverity::parse(&settings.min_severity)
                .unwrap_or(AlertSeverity::Warning),
            queue,
            metrics,
        }
    }

    /// Queues `body` (a JSON alert event of `severity`) for delivery, without waiting.
    pub fn send(&self, severity: AlertSeverity, body: &[u8]) {
        if severity < self.min_severity {
            return;
        }
        if self.queue.try_send(body.to_vec()).is_err() {
            self.metrics
                .webhook_deliveries_total
                .with_label_values(&["dropped"])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

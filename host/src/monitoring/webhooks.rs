//! Alert webhooks: each raised or resolved alert is POSTed as JSON to every
//! `[[monitoring.webhooks]]` URL, from a task of its own per delivery, with a timeout per
//! try and retries with doubling waits (1 s, 2 s, 4 s...). Nothing waits for them: serving
//! and learning go on whatever the receiver does. Deliveries still failing after
//! `max_attempts` are logged and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::alerts::Alert;
use crate::config::WebhookConfig;

/// What a receiver gets.
#[derive(Clone, Debug, Serialize)]
pub struct Notification {
    /// `raised` or `resolved`.
    pub status: &'static str,
    pub alert: Alert,
    /// The node that sent it.
    pub node: String,
}

/// Sends notifications to the configured webhooks, from a thread of its own running the
/// deliveries (the server may not have started its runtime yet, and must never wait).
pub struct Webhooks {
    hooks: Vec<WebhookConfig>,
    queue: tokio::sync::mpsc::UnboundedSender<(WebhookConfig, Vec<u8>)>,
    pub delivered: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
}

impl Webhooks {
    pub fn start(hooks: Vec<WebhookConfig>) -> std::io::Result<Self> {
        let (queue, mut deliveries) = tokio::sync::mpsc::unbounded_channel();
        let delivered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = reqwest::Client::new();
        let (ok, gave_up) = (delivered.clone(), failed.clone());
        std::thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some((hook, body)) = deliveries.recv().await {
                        tokio::spawn(deliver(
                            client.clone(),
                            hook,
                            body,
                            ok.clone(),
                            gave_up.clone(),
                        ));
                    }
                })
            })?;
        Ok(Self {
            hooks,
            queue,
            delivered,
            failed,
        })
    }

    /// Starts delivering `notification` to every webhook; returns at once.
    pub fn send(&self, notification: &Notification) {
        let Ok(body) = serde_json::to_vec(notification) else {
            return;
        };
        for hook in &self.hooks {
            let _ = self.queue.send((hook.clone(), body.clone()));
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    hook: WebhookConfig,
    body: Vec<u8>,
    delivered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=hook.max_attempts {
        let sent = client
            .post(&hook.url)
            .header("content-type", "application/json")
            .timeout(Duration::from_millis(hook.timeout_ms))
            .body(body.clone())
            .send()
            .await;
        let error = match sent {
            Ok(response) if response.status().is_success() => {
                delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(response) => format!("answered {}", response.status()),
            Err(error) => error.to_string(),
        };
        tracing::warn!(url = %hook.url, attempt, %error, "alert webhook failed");
        if attempt < hook.max_attempts {
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
    }
    failed.fetch_add(1, Ordering::Relaxed);
    tracing::error!(url = %hook.url, "alert webhook given up");
}

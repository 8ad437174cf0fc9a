//! Alert webhooks: each raised or resolved alert is POSTed as JSON to every
//! `[[monitoring.webhooks]]` URL, in order per webhook, with a timeout per try and retries
//! with doubling waits (1 s, 2 s, 4 s... at most 60 s). Nothing waits for them: serving
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

/// Longest wait between two tries.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Sends notifications to the configured webhooks, from a thread of its own running the
/// deliveries (the server may not have started its runtime yet, and must never wait). Each
/// webhook gets its notifications in order: "resolved" never overtakes its "raised".
pub struct Webhooks {
    queues: Vec<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
    pub delivered: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
}

impl Webhooks {
    pub fn start(hooks: Vec<WebhookConfig>) -> std::io::Result<Self> {
        let delivered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        if hooks.is_empty() {
            return Ok(Self {
                queues: Vec::new(),
                delivered,
                failed,
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = reqwest::Client::new();
        let mut queues = Vec::new();
        let mut receivers = Vec::new();
        for hook in hooks {
            let (queue, notifications) = tokio::sync::mpsc::unbounded_channel();
            queues.push(queue);
            receivers.push((hook, notifications));
        }
        let (ok, gave_up) = (delivered.clone(), failed.clone());
        std::thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for (hook, mut notifications) in receivers {
                        let (client, ok, gave_up) = (client.clone(), ok.clone(), gave_up.clone());
                        tasks.spawn(async move {
                            while let Some(body) = notifications.recv().await {
                                deliver(&client, &hook, body, &ok, &gave_up).await;
                            }
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                })
            })?;
        Ok(Self {
            queues,
            delivered,
            failed,
        })
    }

    /// Queues `notification` for every webhook; returns at once.
    pub fn send(&self, notification: &Notification) {
        let Ok(body) = serde_json::to_vec(notification) else {
            return;
        };
        for queue in &self.queues {
            let _ = queue.send(body.clone());
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    hook: &WebhookConfig,
    body: Vec<u8>,
    delivered: &AtomicU64,
    failed: &AtomicU64,
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
            wait = wait.saturating_mul(2).min(MAX_WAIT);
        }
    }
    failed.fetch_add(1, Ordering::Relaxed);
    tracing::error!(url = %hook.url, "alert webhook given up");
}

//! Core NATS input: one subscription per served timeframe, `<prefix>.<tf>.>` (or, on
//! partitioned subjects, one per timeframe and owned partition, `<prefix>.<tf>.*.<p>`), into the shared
//! intake until told to stop; then drains the subscriptions (the server stops sending, and
//! every message the client already holds is still taken in, not thrown away) and returns
//! when they end. Core NATS has no acknowledgements: a message is done once it is in the
//! pipeline.
use async_nats::Client;
use futures::StreamExt;
use tokio::sync::watch;

use super::{NatsConfig, TRANSPORT};
use crate::bus::ingest::{Incoming, Intake};
use crate::bus::nats::dead_letters::NatsDeadLetters;

pub async fn run(
    client: Client,
    cfg: NatsConfig,
    timeframes: Vec<String>,
    intake: Intake,
    dlq: NatsDeadLetters,
    mut stop: watch::Receiver<bool>,
    subscribed: tokio::sync::oneshot::Sender<()>,
) -> Result<(), async_nats::SubscribeError> {
    let mut subs = Vec::new();
    for tf in &timeframes {
        for subject in cfg.input_subjects(tf) {
            let sub = client.subscribe(subject.clone()).await?;
            tracing::info!(%subject, "subscribed");
            subs.push(sub);
        }
    }
    // Ready only once the server has every subscription, so that a message published after
    // "ready" reaches this instance.
    let wait = std::time::Duration::from_millis(cfg.connect_timeout_ms.max(1_000));
    match tokio::time::timeout(wait, round_trip(&client)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "nats subscriptions not confirmed"),
        Err(_) => tracing::warn!(
            wait_ms = wait.as_millis() as u64,
            "nats subscriptions not confirmed: no echo from the server on this connection's \
             inbox (may the user publish to _INBOX.>?)"
        ),
    }
    let _ = subscribed.send(());
    let mut all = futures::stream::select_all(subs);
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed(), if !draining => {
                draining = true;
                for s in all.iter_mut() {
                    if let Err(e) = s.drain().await {
                        tracing::warn!(error = %e, "nats drain failed");
                    }
                }
            }
            msg = all.next() => {
                let Some(msg) = msg else { break };
                let subject = msg.subject.as_str();
                let names = cfg.subject_names(subject);
                let incoming = Incoming {
                    payload: msg.payload.clone(),
                    key: None,
                    source: subject,
                    subject_names: names,
                    position: None,
                    ack: None,
                    history: false,
                    refill: false,
                };
                if intake.accept(TRANSPORT, incoming, &dlq, |_| {}).await.is_err() {
                    tracing::error!("the router is gone; stopping NATS intake");
                    break;
                }
            }
        }
    }
    Ok(())
}

/// A round trip through the server on this connection. async-nats's `flush` only writes the
/// socket: the server may still be reading the subscriptions when it returns, and a message
/// another connection publishes at once is then not delivered to them. The server handles a
/// connection's protocol in order, so once a message this client publishes to its own inbox
/// comes back, every subscription sent before it is in place.
pub async fn round_trip(client: &Client) -> Result<(), String> {
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| format!("subscribing to {inbox}: {e}"))?;
    client
        .publish(inbox.clone(), bytes::Bytes::new())
        .await
        .map_err(|e| format!("publishing to {inbox}: {e}"))?;
    client.flush().await.map_err(|e| format!("flush: {e}"))?;
    match echo.next().await {
        Some(_) => Ok(()),
        None => Err("the connection closed before the echo came back".into()),
    }
}

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
    // A flush is a round trip to the server: once it returns, the server has every
    // subscription, and a message published after "ready" reaches this instance.
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "nats flush after subscribing");
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

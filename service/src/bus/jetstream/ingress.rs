//! JetStream input: ensures the stream and the durable pull consumer, then pulls messages
//! into the shared intake. Each message is acknowledged only when its last ack clone is
//! dropped, that is, once its predictions are with every sink (or its dead letter was
//! published, or it ended without a prediction by design). Unacknowledged messages are
//! delivered again after `ack_wait_ms` or a restart; the router drops what it already saw.
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{AckKind, Context};
use augur_actors::telemetry as t;
use augur_actors::types::{Ack, Completion};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::config::Lane;
use super::{JetStreamConfig, JetStreamState, TRANSPORT};
use crate::bus::ingest::{Incoming, Intake};
use crate::bus::nats::{NatsDeadLetters, subject_names};

/// Messages in the pipeline, by stream sequence: a redelivery of one of them (its ack wait ran
/// out while its prediction was still on its way) is not ingested again, only told to wait.
pub type InFlight = Arc<Mutex<HashSet<u64>>>;

/// Acknowledges its message when the last clone of the [`Ack`] is dropped, or gives it back
/// (a nak: redelivered at once) when an output of it failed.
struct AckOnDrop {
    acker: Option<Acker>,
    sequence: u64,
    failed: AtomicBool,
    in_flight: InFlight,
    tx: mpsc::UnboundedSender<(Acker, bool)>,
}

impl Completion for AckOnDrop {
    fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

impl Drop for AckOnDrop {
    fn drop(&mut self) {
        let left = self.in_flight.lock().map(|mut f| {
            f.remove(&self.sequence);
            f.len()
        });
        if let Ok(n) = left {
            metrics::gauge!(t::STATE_ENTRIES, "map" => "jetstream_in_flight").set(n as f64);
        }
        if let Some(a) = self.acker.take() {
            let _ = self.tx.send((a, self.failed.load(Ordering::Relaxed)));
        }
    }
}

/// Sends queued acknowledgements (or naks) until every [`AckOnDrop`] and the ingress are gone.
pub async fn run_acker(mut rx: mpsc::UnboundedReceiver<(Acker, bool)>, state: Arc<JetStreamState>) {
    while let Some((a, failed)) = rx.recv().await {
        let sent = if failed {
            state.nacked.fetch_add(1, Ordering::Relaxed);
            a.ack_with(AckKind::Nak(None)).await
        } else {
            a.ack().await.map(|()| {
                state.acked.fetch_add(1, Ordering::Relaxed);
            })
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "jetstream ack not sent; the message will be redelivered");
        }
    }
}

pub async fn ensure(
    js: &Context,
    cfg: &JetStreamConfig,
    timeframes: &[String],
    lane: &Lane,
) -> Result<PullConsumer, String> {
    let stream = if cfg.create_stream {
        js.get_or_create_stream(StreamConfig {
            name: cfg.stream.clone(),
            subjects: cfg.stream_subjects(timeframes),
            storage: if cfg.storage == "memory" {
                StorageType::Memory
            } else {
                StorageType::File
            },
            max_age: Duration::from_millis(cfg.max_age_ms),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("stream {}: {e}", cfg.stream))?
    } else {
        js.get_stream(&cfg.stream)
            .await
            .map_err(|e| format!("stream {}: {e}", cfg.stream))?
    };
    // A stream that also keeps the dead letters would feed each one back in, forever.
    let subjects = &stream.cached_info().config.subjects;
    if let Some(s) = subjects.iter().find(|s| subject_matches(s, &cfg.dlq_subject)) {
        return Err(format!(
            "stream {} captures {s:?}, which holds the dead-letter subject {:?}: refused dead letters would come back as input",
            cfg.stream, cfg.dlq_subject
        ));
    }
    for tf in timeframes {
        let wanted = if cfg.partition_count > 0 {
            format!("{}.{tf}.x.0", cfg.input_prefix)
        } else {
            format!("{}.{tf}.x", cfg.input_prefix)
        };
        if !subjects.iter().any(|s| subject_matches(s, &wanted)) {
            tracing::warn!(stream = %cfg.stream, timeframe = %tf, "the existing stream does not capture this timeframe's subjects");
        }
    }
    stream
        .get_or_create_consumer(
            &lane.durable,
            pull::Config {
                durable_name: Some(lane.durable.clone()),
                filter_subject: lane.filter.clone().unwrap_or_default(),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_millis(cfg.ack_wait_ms),
                max_ack_pending: cfg.max_ack_pending,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {}: {e}", lane.durable))
}

/// NATS subject matching: `*` is one token, `>` the rest (one or more tokens).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut s = subject.split('.');
    for p in pattern.split('.') {
        match (p, s.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

/// Rebuilds the windows of a lane's streams from the stream's history before the durable
/// consumer's first pull (a restart, or a new owner of the partition): an ephemeral consumer
/// reads from `rewind_messages` before the durable's acknowledged floor up to the last message
/// it delivered. What is at or below the floor was predicted: it only refills windows. What
/// lies above it was delivered and perhaps predicted, perhaps not: it is predicted now, and
/// the durable's redeliveries of it are dropped as duplicates (their acks released with the
/// prediction). Returns (refilled, predicted again).
async fn rebuild(
    js: &Context,
    cfg: &JetStreamConfig,
    lane: &Lane,
    durable: &mut PullConsumer,
    intake: &Intake,
    dlq: &NatsDeadLetters,
) -> Result<(u64, u64), String> {
    let info = durable.info().await.map_err(|e| format!("consumer info: {e}"))?;
    let (floor, delivered) = (info.ack_floor.stream_sequence, info.delivered.stream_sequence);
    if delivered == 0 || cfg.rewind_messages == 0 {
        return Ok((0, 0));
    }
    let start = floor.saturating_sub(cfg.rewind_messages).max(1);
    let stream = js
        .get_stream(&cfg.stream)
        .await
        .map_err(|e| format!("stream {}: {e}", cfg.stream))?;
    let reader: PullConsumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            filter_subject: lane.filter.clone().unwrap_or_default(),
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("history reader: {e}"))?;
    let (mut refilled, mut again) = (0, 0);
    'read: loop {
        let mut batch = reader
            .fetch()
            .max_messages(cfg.fetch_batch)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(|e| format!("history read: {e}"))?;
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| format!("history read: {e}"))?;
            got += 1;
            let Ok(seq) = m.info().map(|i| i.stream_sequence) else {
                continue;
            };
            if seq > delivered {
                break 'read;
            }
            let refill = seq <= floor;
            let subject = m.subject.as_str();
            let incoming = Incoming {
                payload: m.payload.clone(),
                key: None,
                source: subject,
                subject_names: subject_names(&cfg.input_prefix, cfg.partition_count > 0, subject),
                position: Some((0, seq as i64)),
                ack: None,
                history: true,
                refill,
            };
            intake
                .accept(TRANSPORT, incoming, dlq, |_| {})
                .await
                .map_err(|e| e.to_string())?;
            if refill {
                refilled += 1;
            } else {
                again += 1;
            }
            if seq >= delivered {
                break 'read;
            }
        }
        if got == 0 {
            break;
        }
    }
    let name = reader.cached_info().name.clone();
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(error = %e, "history reader not deleted; it expires by itself");
    }
    Ok((refilled, again))
}

/// What the ingress needs besides the intake.
pub struct Ingress {
    pub js: Context,
    /// The consumer, when `connect` could ensure it.
    pub ready: Option<PullConsumer>,
    pub cfg: JetStreamConfig,
    /// The consumer this ingress pulls from.
    pub lane: Lane,
    /// Messages in the pipeline, shared by every lane (stream sequences are unique).
    pub in_flight: InFlight,
    pub timeframes: Vec<String>,
    pub dlq: NatsDeadLetters,
    pub state: Arc<JetStreamState>,
    pub acks: mpsc::UnboundedSender<(Acker, bool)>,
}

/// Ensures the consumer and pulls from it, one batch (`fetch_batch`, at most one second
/// idle) at a time, until `stop`. A stop takes effect between batches: every message the
/// server delivered is taken in, so nothing is left to come back later behind newer ones (the
/// router would drop it as an older sequence). When the consumer goes away (deleted,
/// replaced) or the server is unreachable, it ensures the consumer again.
pub async fn run(ingress: Ingress, intake: Intake, stop: watch::Receiver<bool>) {
    let Ingress {
        js,
        mut ready,
        cfg,
        lane,
        in_flight,
        timeframes,
        dlq,
        state,
        acks,
    } = ingress;
    let mut stop = stop;
    let pause = |stop: &mut watch::Receiver<bool>| {
        let mut stop = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                _ = stop.changed() => true,
            }
        }
    };
    let mut rebuilt = false;
    'consumer: loop {
        let mut consumer = match ready.take() {
            Some(c) => c,
            None => match ensure(&js, &cfg, &timeframes, &lane).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "jetstream not ready; retrying");
                    if *stop.borrow() || pause(&mut stop).await {
                        return;
                    }
                    continue 'consumer;
                }
            },
        };
        if !rebuilt {
            let started = std::time::Instant::now();
            match rebuild(&js, &cfg, &lane, &mut consumer, &intake, &dlq).await {
                Ok((refilled, again)) => {
                    rebuilt = true;
                    tracing::info!(durable = %lane.durable, refilled, predicted_again = again, took_ms = started.elapsed().as_millis() as u64, "jetstream windows rebuilt from the stream");
                }
                Err(e) => {
                    tracing::warn!(error = %e, durable = %lane.durable, "jetstream windows not rebuilt; retrying");
                    if pause(&mut stop).await {
                        return;
                    }
                    continue 'consumer;
                }
            }
        }
        tracing::info!(stream = %cfg.stream, durable = %lane.durable, filter = ?lane.filter, "jetstream consuming");
        while !*stop.borrow() {
            let batch = consumer
                .fetch()
                .max_messages(cfg.fetch_batch)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    // The server is away, or the consumer is gone: ensure it again.
                    state.consuming.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "jetstream pull failed");
                    if pause(&mut stop).await {
                        return;
                    }
                    continue 'consumer;
                }
            };
            state.consuming.store(true, Ordering::Relaxed);
            while let Some(m) = batch.next().await {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "jetstream pull");
                        break;
                    }
                };
                let Ok((sequence, delivered)) = m.info().map(|i| (i.stream_sequence, i.delivered)) else {
                    tracing::warn!(subject = %m.subject, "jetstream message without metadata; not acknowledged");
                    continue;
                };
                let (msg, acker) = m.split();
                state.received.fetch_add(1, Ordering::Relaxed);
                if delivered > 1 {
                    state.redelivered.fetch_add(1, Ordering::Relaxed);
                }
                let (fresh, n) = in_flight
                    .lock()
                    .map(|mut f| (f.insert(sequence), f.len()))
                    .unwrap_or((true, 0));
                metrics::gauge!(t::STATE_ENTRIES, "map" => "jetstream_in_flight").set(n as f64);
                if !fresh {
                    // Its first delivery is still in the pipeline: ask for more time.
                    if let Err(e) = acker.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "jetstream progress not sent");
                    }
                    continue;
                }
                let subject = msg.subject.as_str();
                let names = subject_names(&cfg.input_prefix, cfg.partition_count > 0, subject);
                let ack = Ack(Arc::new(AckOnDrop {
                    acker: Some(acker),
                    sequence,
                    failed: AtomicBool::new(false),
                    in_flight: in_flight.clone(),
                    tx: acks.clone(),
                }));
                let incoming = Incoming {
                    payload: msg.payload.clone(),
                    key: None,
                    source: subject,
                    subject_names: names,
                    position: Some((0, sequence as i64)),
                    ack: Some(ack),
                    // The stream's history is not stale: a backlog kept while the service was
                    // down is predicted (marked late), not dead-lettered for its age.
                    history: true,
                    refill: false,
                };
                if intake.accept(TRANSPORT, incoming, &dlq, |_| {}).await.is_err() {
                    tracing::error!("the router is gone; stopping JetStream intake");
                    state.consuming.store(false, Ordering::Relaxed);
                    return;
                }
            }
        }
        state.consuming.store(false, Ordering::Relaxed);
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn test_subject_patterns_match_as_nats_does() {
        assert!(subject_matches("features.>", "features.dlq"));
        assert!(subject_matches("features.*", "features.dlq"));
        assert!(subject_matches("features.1m.>", "features.1m.AAPL"));
        assert!(!subject_matches("features.1m.>", "features.dlq"));
        assert!(!subject_matches("features.1m.>", "features.1m"));
        assert!(!subject_matches("features.*", "features.1m.AAPL"));
        assert!(subject_matches("features.dlq", "features.dlq"));
        assert!(!subject_matches("features.dlq.x", "features.dlq"));
    }
}

//! Kafka health: connection state (for readiness), consumer lag and uncommitted input (for
//! the metrics), watched from a plain thread because librdkafka's metadata calls block.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use augur_actors::telemetry as t;
use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;

use crate::bus::Health;

/// What health, readiness and the tests see of Kafka.
#[derive(Debug, Default)]
pub struct KafkaStats {
    pub connected: AtomicBool,
    pub delivered: AtomicU64,
    pub produce_errors: AtomicU64,
    pub consumed: AtomicU64,
    pub uncommitted: AtomicU64,
    /// Streams whose recent offsets hold the committed offset back (bounded by the rewind
    /// limits).
    pub rewind_streams: AtomicU64,
    /// Offsets the tracker holds: unfinished copies and the streams' rewind offsets.
    pub tracked_offsets: AtomicU64,
    /// Prediction deliveries in flight (retrying while the broker is down).
    pub in_flight: AtomicU64,
    /// Predictions shed at `max_pending_deliveries`.
    pub shed: AtomicU64,
    pub lag: AtomicU64,
    /// Streams remembered on the owned partitions (released on revoke).
    pub owned_streams: AtomicU64,
    /// The input partitions this instance owns.
    pub assigned: std::sync::Mutex<Vec<i32>>,
}

/// Watches the broker from a plain thread (librdkafka's metadata calls block): connection
/// state for readiness, consumer lag for the metrics. Ends when `stop` is set.
pub fn spawn_health(
    producer: FutureProducer,
    consumer: Option<Arc<super::GroupConsumer>>,
    topic: String,
    stats: Arc<KafkaStats>,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("kafka-health".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let up = rdkafka::producer::Producer::client(&producer)
                    .fetch_metadata(None, Duration::from_millis(1000))
                    .is_ok();
                if up != stats.connected.swap(up, Ordering::Relaxed) {
                    tracing::info!(connected = up, "kafka connection");
                }
                if up && let Some(c) = &consumer {
                    let mut lag = 0i64;
                    if let Ok(pos) = c.position() {
                        for e in pos.elements_for_topic(&topic) {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            // The producer's connection: the consumer's is held by its long fetch.
                            let high = rdkafka::producer::Producer::client(&producer).fetch_watermarks(
                                &topic,
                                e.partition(),
                                Duration::from_millis(1000),
                            );
                            if let (Offset::Offset(at), Ok((_, high))) = (e.offset(), high) {
                                lag += (high - at).max(0);
                            }
                        }
                    }
                    stats.lag.store(lag as u64, Ordering::Relaxed);
                    metrics::gauge!(t::KAFKA_CONSUMER_LAG).set(lag as f64);
                }
                metrics::gauge!(t::KAFKA_UNCOMMITTED).set(stats.uncommitted.load(Ordering::Relaxed) as f64);
                metrics::gauge!(t::KAFKA_REWIND_STREAMS)
                    .set(stats.rewind_streams.load(Ordering::Relaxed) as f64);
                for (map, n) in [
                    ("kafka_offsets", &stats.tracked_offsets),
                    ("kafka_deliveries", &stats.in_flight),
                    ("kafka_owned_streams", &stats.owned_streams),
                ] {
                    metrics::gauge!(t::STATE_ENTRIES, "map" => map).set(n.load(Ordering::Relaxed) as f64);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(error = %e, "kafka health thread not started");
            None
        }
    }
}

impl Health for KafkaStats {
    fn name(&self) -> &'static str {
        super::TRANSPORT.as_str()
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "connected": self.connected(),
            "consumed": self.consumed.load(Ordering::Relaxed),
            "delivered": self.delivered.load(Ordering::Relaxed),
            "produce_errors": self.produce_errors.load(Ordering::Relaxed),
            "uncommitted": self.uncommitted.load(Ordering::Relaxed),
            "rewind_streams": self.rewind_streams.load(Ordering::Relaxed),
            "deliveries_in_flight": self.in_flight.load(Ordering::Relaxed),
            "shed": self.shed.load(Ordering::Relaxed),
            "lag": self.lag.load(Ordering::Relaxed),
            "assigned_partitions": self.assigned.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }
}

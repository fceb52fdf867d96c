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
    /// How long the consumer has been connected without owning a partition (ms; 0 while it
    /// owns one).
    pub unassigned_ms: AtomicU64,
}

/// Watches for a consumer that is connected yet owns no input partition. Past `after` it
/// says so once, at warn level: either the group has more members than the topic has
/// partitions (an idle standby), or the group cannot form. The latter is what tansu 0.6.0
/// does to a static member (`group.instance.id`) whose session timed out: it expires dead
/// members only on a dynamic member's join, sync or heartbeat, so the timed-out member id
/// stays the group's leader and every SyncGroup answers REBALANCE_IN_PROGRESS, for good
/// (docs/SCALING.md).
#[derive(Debug)]
pub struct Unassigned {
    after: Duration,
    since: Option<std::time::Instant>,
    warned: bool,
}

impl Unassigned {
    pub fn new(after: Duration) -> Self {
        Unassigned {
            after,
            since: None,
            warned: false,
        }
    }

    /// One observation: `idle` when connected without a partition. Returns how long it has
    /// been so, and whether the warning is due now (once per idle spell).
    pub fn observe(&mut self, idle: bool, now: std::time::Instant) -> (Duration, bool) {
        if !idle {
            if self.warned {
                tracing::info!("kafka consumer owns partitions again");
            }
            self.since = None;
            self.warned = false;
            return (Duration::ZERO, false);
        }
        let idle_for = now.duration_since(*self.since.get_or_insert(now));
        let warn = !self.warned && idle_for >= self.after;
        self.warned |= warn;
        (idle_for, warn)
    }
}

/// Watches the broker from a plain thread (librdkafka's metadata calls block): connection
/// state for readiness, consumer lag for the metrics. Ends when `stop` is set.
pub fn spawn_health(
    producer: FutureProducer,
    consumer: Option<Arc<super::GroupConsumer>>,
    topic: String,
    stats: Arc<KafkaStats>,
    stop: Arc<AtomicBool>,
    unassigned_after: Duration,
) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("kafka-health".into())
        .spawn(move || {
            let mut unassigned = Unassigned::new(unassigned_after);
            while !stop.load(Ordering::Relaxed) {
                let up = rdkafka::producer::Producer::client(&producer)
                    .fetch_metadata(None, Duration::from_millis(1000))
                    .is_ok();
                if up != stats.connected.swap(up, Ordering::Relaxed) {
                    tracing::info!(connected = up, "kafka connection");
                }
                // Observed only while connected: a metadata fetch that timed out says nothing
                // about the assignment, and must not end an idle spell.
                if consumer.is_some() && up {
                    let idle = stats
                        .assigned
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_empty();
                    let (idle_for, warn) = unassigned.observe(idle, std::time::Instant::now());
                    if warn {
                        tracing::warn!(
                            idle_s = idle_for.as_secs(),
                            "kafka consumer connected but owns no input partition: more instances than \
                             partitions, or the group cannot form (tansu 0.6.0 with a static member \
                             whose session timed out: docs/SCALING.md)"
                        );
                    }
                    stats
                        .unassigned_ms
                        .store(idle_for.as_millis() as u64, Ordering::Relaxed);
                    metrics::gauge!(t::KAFKA_UNASSIGNED_SECONDS).set(idle_for.as_secs_f64());
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
            "unassigned_ms": self.unassigned_ms.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn unassigned_warns_once_per_idle_spell_past_the_limit() {
        let mut u = Unassigned::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(u.observe(true, t0), (Duration::ZERO, false));
        assert_eq!(
            u.observe(true, t0 + Duration::from_secs(29)),
            (Duration::from_secs(29), false)
        );
        assert_eq!(
            u.observe(true, t0 + Duration::from_secs(30)),
            (Duration::from_secs(30), true)
        );
        assert_eq!(
            u.observe(true, t0 + Duration::from_secs(60)),
            (Duration::from_secs(60), false)
        );
        // Partitions again: the spell ends; a new one counts from its own start.
        assert_eq!(
            u.observe(false, t0 + Duration::from_secs(61)),
            (Duration::ZERO, false)
        );
        assert_eq!(
            u.observe(true, t0 + Duration::from_secs(70)),
            (Duration::ZERO, false)
        );
        assert_eq!(
            u.observe(true, t0 + Duration::from_secs(100)),
            (Duration::from_secs(30), true)
        );
    }
}

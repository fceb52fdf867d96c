//! NATS connection state for readiness and health; slow-consumer drops and disconnects.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::Client;

use crate::bus::Health;

/// Counted by the connection's event callback.
#[derive(Debug, Default)]
pub struct NatsStats {
    pub slow_consumer_drops: AtomicU64,
    pub disconnects: AtomicU64,
}

pub fn is_connected(c: &Client) -> bool {
    c.connection_state() == async_nats::connection::State::Connected
}

/// The health of one NATS connection (core NATS or JetStream).
pub struct NatsHealth {
    pub name: &'static str,
    pub client: Client,
    pub stats: Arc<NatsStats>,
    /// The input subjects this instance subscribes to (its partitions, when partitioned).
    pub subjects: Vec<String>,
}

impl Health for NatsHealth {
    fn name(&self) -> &'static str {
        self.name
    }

    fn connected(&self) -> bool {
        is_connected(&self.client)
    }

    fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "connected": self.connected(),
            "slow_consumer_drops": self.stats.slow_consumer_drops.load(Ordering::Relaxed),
            "disconnects": self.stats.disconnects.load(Ordering::Relaxed),
            "input_subjects": self.subjects,
        })
    }
}

//! JetStream health: the connection, and whether the durable consumer is pulling.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_nats::Client;

use crate::bus::Health;
use crate::bus::nats::is_connected;

/// What the ingress reports.
#[derive(Debug, Default)]
pub struct JetStreamState {
    /// The stream and the durable consumer exist and the pull runs.
    pub consuming: AtomicBool,
    pub received: AtomicU64,
    pub redelivered: AtomicU64,
    pub acked: AtomicU64,
    /// Given back (nak) because an output of the message failed.
    pub nacked: AtomicU64,
}

pub struct JetStreamHealth {
    pub client: Client,
    pub state: Arc<JetStreamState>,
}

impl Health for JetStreamHealth {
    fn name(&self) -> &'static str {
        super::TRANSPORT.as_str()
    }

    /// Connected and pulling: before the consumer exists nothing can arrive.
    fn connected(&self) -> bool {
        is_connected(&self.client) && self.state.consuming.load(Ordering::Relaxed)
    }

    fn details(&self) -> serde_json::Value {
        let s = &self.state;
        serde_json::json!({
            "connected": self.connected(),
            "received": s.received.load(Ordering::Relaxed),
            "redelivered": s.redelivered.load(Ordering::Relaxed),
            "acked": s.acked.load(Ordering::Relaxed),
            "nacked": s.nacked.load(Ordering::Relaxed),
        })
    }
}

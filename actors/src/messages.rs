//! Every message of the actor graph, in one place. Actors of other layers are reached through
//! `Recipient<M>` of these messages, never through their concrete addresses.
use std::sync::Arc;

use actix::prelude::*;

use crate::breaker::Transition;
use crate::types::{Ensemble, MemberPrediction, Vector};

/// Validated vectors into the router (awaited by the ingress: back-pressure).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ingest(pub Vec<Vector>);

/// What the aggregator carries from the input to the output of one event.
#[derive(Debug, Clone)]
pub struct EventMeta {
    pub sequence: u64,
    pub event_time_ms: i64,
    pub correlation_id: Arc<str>,
    pub published_at_ns: i64,
    pub late_ms: u64,
    /// The close of the input's bar, when it carried one: forecasts are priced from it.
    pub close: Option<f64>,
    /// Completion of the input (dropped when the event ends without a prediction).
    pub ack: Option<crate::types::Ack>,
}

/// The router tells the aggregator an event is coming, before any member sees it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartEvent(pub EventMeta);

/// How one member fared on one event.
#[derive(Debug, Clone)]
pub enum MemberStatus {
    /// Its window is not full yet: no output by design.
    Warming,
    Output(MemberPrediction),
    /// Its circuit is open: the aggregator leaves it out or uses the fallback.
    Rejected,
    /// The call failed (code).
    Failed(&'static str),
}

/// A member's answer for event `sequence`; `member` indexes the stream's member list.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MemberDone {
    pub sequence: u64,
    pub member: usize,
    pub status: MemberStatus,
}

/// A finished ensemble prediction, for every sink.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Publish(pub Arc<Ensemble>);

/// A receiver of every ensemble prediction that takes it without an actor hop, on the
/// aggregator's thread: it must only queue (the outcomes thread's intake).
pub trait EnsembleSink: Send + Sync {
    fn publish(&self, e: &Arc<Ensemble>);
}

/// Where every ensemble prediction goes: the sink actors (transports, status) and the
/// direct sinks.
#[derive(Clone, Default)]
pub struct Publishers {
    pub actors: Arc<[Recipient<Publish>]>,
    pub direct: Arc<[Arc<dyn EnsembleSink>]>,
}

impl Publishers {
    pub fn new(actors: Vec<Recipient<Publish>>, direct: Vec<Arc<dyn EnsembleSink>>) -> Self {
        Publishers {
            actors: actors.into(),
            direct: direct.into(),
        }
    }

    pub fn publish(&self, e: Arc<Ensemble>) {
        for d in self.direct.iter() {
            d.publish(&e);
        }
        for p in self.actors.iter() {
            p.do_send(Publish(e.clone()));
        }
    }
}

impl From<Vec<Recipient<Publish>>> for Publishers {
    fn from(actors: Vec<Recipient<Publish>>) -> Self {
        Publishers::new(actors, Vec::new())
    }
}

/// A model's circuit changed state (from the model's gate).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CircuitChanged {
    pub model: usize,
    pub transition: Transition,
}

/// A model actor's call failed (the supervisor keeps the error for the health view; the
/// model's gate has already counted it against the breaker).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ModelFailed {
    pub model: usize,
    pub error: String,
}

/// Stops a model actor, or an evicted stream's aggregator (which first ends its pending
/// events, counted).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// The streams of input partitions this instance no longer owns (a consumer-group hand-over):
/// their state is dropped once what was already routed has finished, so that whichever
/// instance takes them next rebuilds their windows from the log.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release(pub Vec<crate::types::StreamKey>);

/// A released stream's aggregator: ends its pending events as usual (members answer or the
/// deadline passes), then stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Operator reset of a parked (faulted) or open model.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct ResetModel(pub String);

/// Another version of a model, loaded and warmed, takes its calls (the supervisor swaps it
/// into the gate between two calls); answered with the version it replaced.
#[derive(Message)]
#[rtype(result = "Result<std::sync::Arc<str>, String>")]
pub struct SwapVersion {
    pub model: String,
    pub version: std::sync::Arc<str>,
    pub executor: crate::executor::ExecutorHandle,
    pub factory: crate::executor::BackendFactory,
}

/// Enables or disables a model at run time (disabled members are not expected by new events).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetEnabled {
    pub model: usize,
    pub enabled: bool,
}

/// Answered once every message sent to the actor before it has been handled: after
/// `Pipeline::drain`, a round trip of this to an in-process sink means it holds every
/// prediction (the aggregators hand predictions over with `do_send`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Barrier;

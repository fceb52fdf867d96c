//! Router: sends each vector to the model actors of its (symbol, timeframe), one per model
//! that serves the timeframe, spawned on first sight, and tells the stream's aggregator an
//! event is coming. It also drops repeated or older sequences (counted): a stream's state
//! lives here, in one process.
use std::sync::Arc;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::aggregator::{Aggregator, AggregatorConfig, Stacker};
use crate::clock::Clock;
use crate::events::{
    ActiveStreams, Duplicate, EventStarted, MailboxFull, SequenceGap, StaleSequence, StreamEvicted,
    StreamsReleased, VectorRefilled, VectorRouted,
};
use crate::gate::ModelGate;
use crate::messages::{
    Drain, EventMeta, Ingest, MemberDone, MemberStatus, ModelFailed, Publishers, Release, SetEnabled,
    StartEvent, Stop,
};
use crate::model_actor::ModelActor;
use crate::telemetry::PipelineStats;
use crate::types::{Ack, Joined, StreamKey, Vector};

/// Router limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Most (symbol, timeframe) streams kept; a new stream beyond it evicts the least recently
    /// active one (counted; its window is rebuilt if it comes back), so that a flood of new
    /// symbols cannot lock out a real one.
    pub max_streams: usize,
    /// Mailbox capacity of each model actor; a full mailbox drops that member for the event.
    pub model_mailbox: usize,
    /// (symbol, timeframe, sequence) keys remembered to drop the same vector arriving again
    /// (on the other transport, or redelivered): an LRU of this many entries.
    pub dedupe_capacity: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_streams: 10_000,
            model_mailbox: 1024,
            dedupe_capacity: 200_000,
        }
    }
}

impl RouterConfig {
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_streams == 0 {
            p.push(format!("{prefix}.max_streams must be at least 1"));
        }
        if self.model_mailbox == 0 {
            p.push(format!("{prefix}.model_mailbox must be at least 1"));
        }
        if self.dedupe_capacity == 0 {
            p.push(format!("{prefix}.dedupe_capacity must be at least 1"));
        }
        p
    }
}

/// Events of a stream kept to tie a later duplicate to (their completions, while alive).
const IN_FLIGHT_KEPT: usize = 4096;

struct Stream {
    last_sequence: Option<u64>,
    /// Recent events whose prediction may still be on its way, oldest first: a duplicate of
    /// one is released only with it.
    in_flight: std::collections::VecDeque<(u64, std::sync::Weak<Joined>)>,
    aggregator: Addr<Aggregator>,
    /// Model index (into the pipeline's model list) per member slot.
    members: Vec<usize>,
    actors: Vec<Option<Addr<ModelActor>>>,
}

pub struct Router {
    cfg: RouterConfig,
    /// The members' gates (each holds its model's current executor).
    gates: Vec<Arc<ModelGate>>,
    aggregator_config: Arc<std::sync::RwLock<AggregatorConfig>>,
    adaptive: Arc<crate::adaptive::AdaptiveWeights>,
    stacker: Option<Stacker>,
    publishers: Publishers,
    supervisor: Recipient<ModelFailed>,
    /// Every stream's state, least recently active first out.
    streams: lru::LruCache<StreamKey, Stream>,
    /// Recently seen (stream, sequence): drops the same vector arriving again.
    seen: lru::LruCache<(StreamKey, u64), ()>,
    stats: Arc<PipelineStats>,
    /// Aggregator deadlines run on this clock.
    clock: Arc<dyn Clock>,
}

impl Router {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: RouterConfig,
        gates: Vec<Arc<ModelGate>>,
        aggregator_config: Arc<std::sync::RwLock<AggregatorConfig>>,
        adaptive: Arc<crate::adaptive::AdaptiveWeights>,
        stacker: Option<Stacker>,
        publishers: Publishers,
        supervisor: Recipient<ModelFailed>,
        stats: Arc<PipelineStats>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let cap = std::num::NonZeroUsize::new(cfg.dedupe_capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        Router {
            seen: lru::LruCache::new(cap),
            cfg,
            gates,
            aggregator_config,
            adaptive,
            stacker,
            publishers,
            supervisor,
            streams: lru::LruCache::unbounded(),
            stats,
            clock,
        }
    }

    /// The sizes of the router's maps, for the state gauges (once a second: a sum over streams).
    fn sample_sizes(&self) {
        let (mut kept, mut windows) = (0, 0);
        for (_, s) in self.streams.iter() {
            kept += s.in_flight.len();
            windows += s.actors.iter().filter(|a| a.is_some()).count();
        }
        let set = |c: &std::sync::atomic::AtomicU64, n: usize| {
            c.store(n as u64, std::sync::atomic::Ordering::Relaxed)
        };
        set(&self.stats.dedupe_keys, self.seen.len());
        set(&self.stats.in_flight_kept, kept);
        set(&self.stats.model_windows, windows);
    }

    /// A later copy of a vector already routed (the other transport's, or a redelivery): its
    /// input is finished when the first copy's prediction is delivered (else a crash in
    /// between loses that prediction on this copy's transport). Released at once when that
    /// event is over.
    fn join_first_copy(&self, v: Vector) {
        if let Some(ack) = v.ack
            && let Some(s) = self.streams.peek(&v.key)
            && let Some(event) = s
                .in_flight
                .iter()
                .rev()
                .find(|(q, _)| *q == v.sequence)
                .and_then(|(_, w)| w.upgrade())
        {
            event.join(ack);
        }
    }

    /// The stream's state, created (actors spawned lazily) when new; past `max_streams` the
    /// least recently active stream is evicted first.
    fn ensure_stream(&mut self, key: &StreamKey) {
        if self.streams.contains(key) {
            return;
        }
        while self.streams.len() >= self.cfg.max_streams {
            let Some((evicted, old)) = self.streams.pop_lru() else {
                break;
            };
            // Its actors stop; its aggregator ends its pending events (counted) and stops.
            for a in old.actors.into_iter().flatten() {
                a.do_send(Stop);
            }
            old.aggregator.do_send(Stop);
            self.stats.emit(StreamEvicted {
                stream: &evicted,
                max_streams: self.cfg.max_streams,
            });
        }
        let members: Vec<usize> = self
            .gates
            .iter()
            .filter(|g| g.info.timeframes.iter().any(|t| **t == *key.timeframe))
            .map(|g| g.index)
            .collect();
        let member_gates = members.iter().map(|&i| self.gates[i].clone()).collect();
        let aggregator = Aggregator::new(
            key.clone(),
            member_gates,
            self.aggregator_config.clone(),
            self.adaptive.clone(),
            self.stacker.clone(),
            self.publishers.clone(),
            self.stats.clone(),
            self.clock.clone(),
        )
        .start();
        let actors = vec![None; members.len()];
        self.streams.put(
            key.clone(),
            Stream {
                last_sequence: None,
                in_flight: Default::default(),
                aggregator,
                members,
                actors,
            },
        );
        self.stats.emit(ActiveStreams(self.streams.len()));
    }

    /// A vector re-read only to rebuild windows: it goes into every member's window and makes
    /// no event. It is remembered as seen (a live copy of it was already predicted) and moves
    /// the stream's last sequence, so that live input continues where history stopped.
    fn refill(&mut self, v: Vector) {
        self.stats.emit(VectorRefilled {
            transport: v.transport,
        });
        self.seen.put((v.key.clone(), v.sequence), ());
        self.ensure_stream(&v.key);
        let Some(s) = self.streams.get_mut(&v.key) else {
            return;
        };
        if s.last_sequence.is_some_and(|last| v.sequence <= last) {
            return;
        }
        s.last_sequence = Some(v.sequence);
        let v = Vector { ack: None, ..v };
        for slot in 0..s.members.len() {
            let actor = Self::actor(s, slot, &self.gates, &self.cfg, &self.supervisor, &self.stats);
            if actor.try_send(v.clone()).is_err() {
                // The window misses this vector: the stream's first live event may be wrong
                // by one bar, so it is counted like any dropped call.
                self.stats.emit(MailboxFull {
                    model: &self.gates[s.members[slot]].info.id,
                });
            }
        }
    }

    /// The model actor of a stream's member slot, started when there is none (or it stopped).
    fn actor(
        s: &mut Stream,
        slot: usize,
        gates: &[Arc<ModelGate>],
        cfg: &RouterConfig,
        supervisor: &Recipient<ModelFailed>,
        stats: &Arc<PipelineStats>,
    ) -> Addr<ModelActor> {
        match &s.actors[slot] {
            Some(a) if a.connected() => a.clone(),
            _ => {
                let a = ModelActor::new(
                    gates[s.members[slot]].clone(),
                    slot,
                    s.aggregator.clone().recipient(),
                    supervisor.clone(),
                    cfg.model_mailbox,
                    stats.clone(),
                )
                .start();
                s.actors[slot] = Some(a.clone());
                a
            }
        }
    }

    fn route(&mut self, v: Vector) {
        // History re-read only for windows is not input again (counted as refilled).
        if v.refill {
            self.refill(v);
            return;
        }
        self.stats.emit(VectorRouted);
        // A key seen before is a duplicate only if the stream's current state routed it (its
        // last sequence is at or past it). A stream released or evicted since then starts
        // again: what its new owner re-reads past the mark is input again, and dropping it
        // would leave the window with a gap (a partition handed away and back).
        if self.seen.put((v.key.clone(), v.sequence), ()).is_some()
            && self
                .streams
                .peek(&v.key)
                .is_some_and(|s| s.last_sequence.is_some_and(|last| last >= v.sequence))
        {
            self.stats.emit(Duplicate {
                transport: v.transport,
            });
            self.join_first_copy(v);
            return;
        }
        self.ensure_stream(&v.key);
        let Some(s) = self.streams.get_mut(&v.key) else {
            return;
        };
        if s.last_sequence.is_some_and(|last| v.sequence <= last) {
            self.stats.emit(StaleSequence {
                transport: v.transport,
            });
            // A copy that lagged past the dedupe memory may still have its first copy's
            // prediction on the way.
            self.join_first_copy(v);
            return;
        }
        if let Some(last) = s.last_sequence
            && v.sequence > last + 1
        {
            self.stats.emit(SequenceGap {
                stream: &v.key,
                missing: v.sequence - last - 1,
            });
        }
        s.last_sequence = Some(v.sequence);
        if s.members.is_empty() {
            return;
        }
        self.stats.emit(EventStarted);
        let joined = Arc::new(Joined::new(v.ack.clone()));
        while s.in_flight.front().is_some_and(|(_, w)| w.strong_count() == 0) {
            s.in_flight.pop_front();
        }
        if s.in_flight.len() >= IN_FLIGHT_KEPT {
            s.in_flight.retain(|(_, w)| w.strong_count() > 0);
            while s.in_flight.len() >= IN_FLIGHT_KEPT {
                s.in_flight.pop_front();
            }
        }
        s.in_flight.push_back((v.sequence, Arc::downgrade(&joined)));
        s.aggregator.do_send(StartEvent(EventMeta {
            sequence: v.sequence,
            event_time_ms: v.event_time_ms,
            correlation_id: v.correlation_id.clone(),
            published_at_ns: v.published_at_ns,
            late_ms: v.late_ms,
            close: v.close,
            ack: Some(Ack(joined)),
        }));
        // Model actors keep values, not completions: only the event (aggregator) holds the ack.
        let v = Vector { ack: None, ..v };
        for slot in 0..s.members.len() {
            let model = s.members[slot];
            let gate = &self.gates[model];
            if !gate.enabled.load(std::sync::atomic::Ordering::Relaxed) {
                s.aggregator.do_send(MemberDone {
                    sequence: v.sequence,
                    member: slot,
                    status: MemberStatus::Failed("disabled"),
                });
                // Out of serving, its windows still move (no call): loaded again, its next
                // output is over the stream's last vectors, not over a window with a gap.
                let actor = Self::actor(s, slot, &self.gates, &self.cfg, &self.supervisor, &self.stats);
                if actor
                    .try_send(Vector {
                        refill: true,
                        ..v.clone()
                    })
                    .is_err()
                {
                    self.stats.emit(MailboxFull { model: &gate.info.id });
                }
                continue;
            }
            let actor = Self::actor(s, slot, &self.gates, &self.cfg, &self.supervisor, &self.stats);
            if actor.try_send(v.clone()).is_err() {
                self.stats.emit(MailboxFull { model: &gate.info.id });
                s.aggregator.do_send(MemberDone {
                    sequence: v.sequence,
                    member: slot,
                    status: MemberStatus::Failed("mailbox_full"),
                });
            }
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(64);
        ctx.run_interval(std::time::Duration::from_secs(1), |r, _| r.sample_sizes());
    }
}

impl Handler<Ingest> for Router {
    type Result = ();

    fn handle(&mut self, Ingest(vs): Ingest, _: &mut Context<Self>) {
        for v in vs {
            self.route(v);
        }
    }
}

impl Handler<SetEnabled> for Router {
    type Result = ();

    fn handle(&mut self, m: SetEnabled, _: &mut Context<Self>) {
        if let Some(g) = self.gates.get(m.model) {
            g.enabled.store(m.enabled, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Handler<Release> for Router {
    type Result = ();

    fn handle(&mut self, Release(keys): Release, _: &mut Context<Self>) {
        let mut released = 0;
        for k in keys {
            if let Some(s) = self.streams.pop(&k) {
                // Queued behind what was routed: the actors finish their calls, the aggregator
                // its events, then they stop.
                for a in s.actors.into_iter().flatten() {
                    a.do_send(Stop);
                }
                s.aggregator.do_send(Drain);
                released += 1;
            }
        }
        if released > 0 {
            self.stats.emit(StreamsReleased(released));
            self.stats.emit(ActiveStreams(self.streams.len()));
        }
    }
}

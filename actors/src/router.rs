//! Router: sends each vector to the model actors of its (symbol, timeframe), one per model
//! that serves the timeframe, spawned on first sight, and tells the stream's aggregator an
//! event is coming. It also drops repeated or older sequences (counted): a stream's state
//! lives here, in one process.
use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::aggregator::{Aggregator, EnsembleSettings, Stacker};
use crate::executor::ExecutorHandle;
use crate::gate::ModelGate;
use crate::messages::{
    EventMeta, Ingest, MemberDone, MemberStatus, ModelFailed, Publish, RestartModel, SetEnabled, StartEvent,
    Stop,
};
use crate::model_actor::ModelActor;
use crate::telemetry::{self as t, PipelineStats};
use crate::types::{StreamKey, Vector};

/// Router limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Most (symbol, timeframe) streams; vectors of further streams are refused (counted).
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

struct Stream {
    last_sequence: Option<u64>,
    aggregator: Addr<Aggregator>,
    /// Model index (into the pipeline's model list) per member slot.
    members: Vec<usize>,
    actors: Vec<Option<Addr<ModelActor>>>,
}

pub struct Router {
    cfg: RouterConfig,
    gates: Vec<Arc<ModelGate>>,
    executors: Vec<ExecutorHandle>,
    settings: Arc<std::sync::RwLock<EnsembleSettings>>,
    stacker: Option<Stacker>,
    publishers: Arc<[Recipient<Publish>]>,
    supervisor: Recipient<ModelFailed>,
    streams: HashMap<StreamKey, Stream>,
    /// Recently seen (stream, sequence): drops the same vector arriving again.
    seen: lru::LruCache<(StreamKey, u64), ()>,
    stats: Arc<PipelineStats>,
    refused_logged: u64,
}

impl Router {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: RouterConfig,
        gates: Vec<Arc<ModelGate>>,
        executors: Vec<ExecutorHandle>,
        settings: Arc<std::sync::RwLock<EnsembleSettings>>,
        stacker: Option<Stacker>,
        publishers: Arc<[Recipient<Publish>]>,
        supervisor: Recipient<ModelFailed>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        let cap = std::num::NonZeroUsize::new(cfg.dedupe_capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        Router {
            seen: lru::LruCache::new(cap),
            cfg,
            gates,
            executors,
            settings,
            stacker,
            publishers,
            supervisor,
            streams: HashMap::new(),
            stats,
            refused_logged: 0,
        }
    }

    fn route(&mut self, v: Vector) {
        PipelineStats::inc(&self.stats.vectors_in);
        if self.seen.put((v.key.clone(), v.sequence), ()).is_some() {
            PipelineStats::inc(&self.stats.duplicates);
            metrics::counter!(t::FEATURES_DEDUPLICATED, "transport" => v.transport.as_str()).increment(1);
            return;
        }
        if !self.streams.contains_key(&v.key) {
            if self.streams.len() >= self.cfg.max_streams {
                PipelineStats::inc(&self.stats.streams_refused);
                metrics::counter!(t::STREAMS_REFUSED).increment(1);
                // Logged with a stride so that a flood of new streams cannot flood the log.
                if self.refused_logged.is_power_of_two() || self.refused_logged == 0 {
                    tracing::warn!(stream = %v.key, max_streams = self.cfg.max_streams, refused = self.refused_logged + 1, "stream cap reached; vector refused");
                }
                self.refused_logged += 1;
                return;
            }
            let members: Vec<usize> = self
                .gates
                .iter()
                .filter(|g| g.info.timeframes.iter().any(|t| **t == *v.key.timeframe))
                .map(|g| g.index)
                .collect();
            let member_gates = members.iter().map(|&i| self.gates[i].clone()).collect();
            let aggregator = Aggregator::new(
                v.key.clone(),
                member_gates,
                self.settings.clone(),
                self.stacker.clone(),
                self.publishers.clone(),
                self.stats.clone(),
            )
            .start();
            let actors = vec![None; members.len()];
            self.streams.insert(
                v.key.clone(),
                Stream {
                    last_sequence: None,
                    aggregator,
                    members,
                    actors,
                },
            );
            self.stats
                .active_streams
                .store(self.streams.len() as u64, std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!(t::ACTIVE_STREAMS).set(self.streams.len() as f64);
        }
        let Some(s) = self.streams.get_mut(&v.key) else {
            return;
        };
        if s.last_sequence.is_some_and(|last| v.sequence <= last) {
            PipelineStats::inc(&self.stats.stale_sequence);
            metrics::counter!(t::FEATURES_STALE_SEQUENCE, "transport" => v.transport.as_str()).increment(1);
            return;
        }
        s.last_sequence = Some(v.sequence);
        if s.members.is_empty() {
            return;
        }
        PipelineStats::inc(&self.stats.events_started);
        s.aggregator.do_send(StartEvent(EventMeta {
            sequence: v.sequence,
            event_time_ms: v.event_time_ms,
            correlation_id: v.correlation_id.clone(),
            published_at_ns: v.published_at_ns,
            ack: v.ack.clone(),
        }));
        // Model actors keep values, not completions: only the event (aggregator) holds the ack.
        let v = Vector { ack: None, ..v };
        for (slot, &model) in s.members.iter().enumerate() {
            let gate = &self.gates[model];
            if !gate.enabled.load(std::sync::atomic::Ordering::Relaxed) {
                s.aggregator.do_send(MemberDone {
                    sequence: v.sequence,
                    member: slot,
                    status: MemberStatus::Failed("disabled"),
                });
                continue;
            }
            let actor = match &s.actors[slot] {
                Some(a) if a.connected() => a.clone(),
                _ => {
                    let a = ModelActor::new(
                        gate.clone(),
                        slot,
                        self.executors[model].clone(),
                        s.aggregator.clone().recipient(),
                        self.supervisor.clone(),
                        self.cfg.model_mailbox,
                        self.stats.clone(),
                    )
                    .start();
                    s.actors[slot] = Some(a.clone());
                    a
                }
            };
            if actor.try_send(v.clone()).is_err() {
                PipelineStats::inc(&self.stats.mailbox_full);
                metrics::counter!(t::MAILBOX_FULL, "model" => gate.info.id.to_string()).increment(1);
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

impl Handler<RestartModel> for Router {
    type Result = ();

    fn handle(&mut self, m: RestartModel, _: &mut Context<Self>) {
        if let Some(e) = self.executors.get_mut(m.model) {
            *e = m.handle;
        }
        for s in self.streams.values_mut() {
            for (slot, &model) in s.members.iter().enumerate() {
                if model == m.model
                    && let Some(a) = s.actors[slot].take()
                {
                    a.do_send(Stop);
                }
            }
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

//! Aggregator: one per (symbol, timeframe). Collects the members' outputs of each event and
//! emits one ensemble prediction when every expected member answered or the deadline passed.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, unix_ns};
use crate::events::{
    CallFailed, CallShed, DeadlineMissed, EventEvicted, EventWarming, EventWithoutMembers, Predicted,
};
use crate::executor::ExecError;
use crate::gate::ModelGate;
use crate::messages::{Drain, EventMeta, MemberDone, MemberStatus, Publishers, StartEvent, Stop};
use crate::telemetry::PipelineStats;
use crate::types::{Ensemble, MemberPrediction, StreamKey, argmax};

/// How members are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    WeightedMean,
    Majority,
    Stacking,
    /// A weighted mean whose weights follow the members' realized log-loss per timeframe
    /// (`adaptive.rs`; needs `outcomes.enabled`).
    Adaptive,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::WeightedMean => "weighted_mean",
            Method::Majority => "majority",
            Method::Stacking => "stacking",
            Method::Adaptive => "adaptive",
        }
    }
}

/// What an open circuit's member contributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Left out of the ensemble.
    Omit,
    /// [0, 1, 0], marked `fallback = true`.
    Neutral,
    /// Equal probabilities, marked `fallback = true`.
    Uniform,
}

/// The `[aggregator]` section: how members are merged; changeable at run time (read at every
/// finalisation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregatorConfig {
    pub method: Method,
    /// Weight per model id for `weighted_mean`; a model not named weighs 1.
    pub weights: std::collections::BTreeMap<String, f64>,
    /// How long an event waits for its members.
    pub deadline_ms: u64,
    pub fallback: Fallback,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            method: Method::WeightedMean,
            weights: Default::default(),
            deadline_ms: 100,
            fallback: Fallback::Omit,
        }
    }
}

impl AggregatorConfig {
    pub fn problems(&self, prefix: &str, known_models: &[String]) -> Vec<String> {
        let mut p = Vec::new();
        for (m, w) in &self.weights {
            if !known_models.iter().any(|k| k == m) {
                p.push(format!("{prefix}.weights names unknown model {m:?}"));
            }
            // Weights are applied in f32: one that overflows it would make every mean NaN.
            if !(w.is_finite() && *w >= 0.0 && *w <= f32::MAX as f64) {
                p.push(format!(
                    "{prefix}.weights.{m} must be finite, >= 0 and at most {:e}, got {w}",
                    f32::MAX
                ));
            }
        }
        if self.deadline_ms == 0 || self.deadline_ms > 600_000 {
            p.push(format!(
                "{prefix}.deadline_ms must be in 1..=600000, got {}",
                self.deadline_ms
            ));
        }
        p
    }

    /// These settings with the adaptive weights of `timeframe` when the method is
    /// `adaptive` and they are moving (equal weights until then).
    pub fn with_adaptive(mut self, adaptive: &crate::adaptive::AdaptiveWeights, timeframe: &str) -> Self {
        if self.method == Method::Adaptive {
            self.weights = adaptive.weights(timeframe).unwrap_or_default();
        }
        self
    }

    pub fn weight(&self, model: &str) -> f32 {
        self.weights.get(model).copied().unwrap_or(1.0) as f32
    }
}

/// The stacking model: its gate (breaker, executor; supervised like the members) and the ids
/// of its input members, in order.
#[derive(Clone, Debug)]
pub struct Stacker {
    pub gate: Arc<ModelGate>,
    pub inputs: Vec<Arc<str>>,
}

/// How an event's members are merged: done at once, or one stacker call away.
#[derive(Debug)]
pub enum Plan {
    Done(Vec<f32>, Method),
    /// Run the stacker on `input`; if it cannot answer, use `fallback` (the weighted mean).
    Stack {
        input: Vec<f32>,
        fallback: Vec<f32>,
    },
}

/// The ensemble rule, the one used by the aggregator and by synchronous predict. Stacking
/// needs the stacker and a real (non-fallback) output of each of its inputs; without them it
/// falls back to the weighted mean, as it does when the stacker's call fails.
pub fn combine(
    members: &[MemberPrediction],
    settings: &AggregatorConfig,
    method: Method,
    stacker: Option<&Stacker>,
) -> Plan {
    match method {
        Method::Majority => Plan::Done(majority(members), Method::Majority),
        Method::WeightedMean => Plan::Done(weighted_mean(members, settings), Method::WeightedMean),
        // The caller put the adaptive weights in `settings` (see `with_adaptive`).
        Method::Adaptive => Plan::Done(weighted_mean(members, settings), Method::Adaptive),
        Method::Stacking => {
            let fallback = weighted_mean(members, settings);
            match stacker.and_then(|st| stacker_input(st, members)) {
                Some(input) => Plan::Stack { input, fallback },
                None => Plan::Done(fallback, Method::WeightedMean),
            }
        }
    }
}

/// The stacker's input: the probabilities of each of its input members, in its order.
fn stacker_input(st: &Stacker, members: &[MemberPrediction]) -> Option<Vec<f32>> {
    let mut input = Vec::with_capacity(st.inputs.len() * 3);
    for id in &st.inputs {
        let m = members.iter().find(|m| m.model_id == *id && !m.fallback)?;
        input.extend_from_slice(&m.probabilities);
    }
    Some(input)
}

impl Stacker {
    /// One stacker call through its gate: an open circuit or a failure gives `None` (the
    /// caller falls back), and the outcome counts on the stacker's breaker.
    pub async fn run(&self, input: Vec<f32>, stats: &PipelineStats) -> Result<Vec<f32>, String> {
        let g = &self.gate;
        let ticket = g.admit();
        if ticket.rejected() {
            return Err(format!("{}: circuit open", g.info.id));
        }
        let started = std::time::Instant::now();
        match g.executor().infer(input).await {
            Ok(out) => {
                g.record(ticket, true, Duration::from_micros(out.inference_us as u64), None);
                Ok(out.probabilities)
            }
            Err(e) => {
                let msg = e.to_string();
                if e.is_model_fault() {
                    g.record(ticket, false, started.elapsed(), Some(&msg));
                } else {
                    g.release(ticket);
                }
                if e == ExecError::QueueFull {
                    stats.emit(CallShed { model: &g.info.id });
                } else {
                    stats.emit(CallFailed {
                        model: &g.info.id,
                        code: e.code(),
                        error: &msg,
                    });
                }
                Err(format!("{}: {msg}", g.info.id))
            }
        }
    }
}

struct Pending {
    meta: EventMeta,
    slots: Vec<Option<MemberStatus>>,
    filled: usize,
    timer: SpawnHandle,
    /// Deadlines already passed without any member answering.
    extensions: u32,
}

/// An event that no member has answered when its deadline passes is given more deadlines (it
/// is queued behind a burst, not late by one slow model), up to this many, before it is
/// dropped as `no_members`. The deadline trades completeness for latency only among members.
const MAX_EXTENSIONS: u32 = 100;

pub struct Aggregator {
    key: StreamKey,
    /// Gates of this stream's members, in slot order.
    members: Vec<Arc<ModelGate>>,
    config: Arc<RwLock<AggregatorConfig>>,
    adaptive: Arc<crate::adaptive::AdaptiveWeights>,
    stacker: Option<Stacker>,
    publishers: Publishers,
    pending: HashMap<u64, Pending>,
    stats: Arc<PipelineStats>,
    /// Deadlines run on this clock.
    clock: Arc<dyn Clock>,
    /// Stacking calls in flight (their events are no longer pending).
    stacking: usize,
    /// The stream was released: stop once nothing is pending or stacking.
    draining: bool,
}

impl Aggregator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: StreamKey,
        members: Vec<Arc<ModelGate>>,
        config: Arc<RwLock<AggregatorConfig>>,
        adaptive: Arc<crate::adaptive::AdaptiveWeights>,
        stacker: Option<Stacker>,
        publishers: Publishers,
        stats: Arc<PipelineStats>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Aggregator {
            key,
            members,
            config,
            adaptive,
            stacker,
            publishers,
            pending: HashMap::new(),
            stats,
            clock,
            stacking: 0,
            draining: false,
        }
    }

    /// A released stream's aggregator stops once its last event is over.
    fn stop_if_drained(&self, ctx: &mut Context<Self>) {
        if self.draining && self.pending.is_empty() && self.stacking == 0 {
            ctx.stop();
        }
    }

    /// Finalises `sequence` when `deadline` passes on the clock.
    fn arm(&self, sequence: u64, deadline: Duration, ctx: &mut Context<Self>) -> SpawnHandle {
        let sleep = self.clock.sleep(deadline);
        ctx.spawn(sleep.into_actor(self).map(move |_, act, ctx| {
            act.finalize(sequence, true, ctx);
            act.stop_if_drained(ctx);
        }))
    }

    fn finalize(&mut self, sequence: u64, by_deadline: bool, ctx: &mut Context<Self>) {
        let settings = self
            .config
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
            .with_adaptive(&self.adaptive, &self.key.timeframe);
        if by_deadline
            && let Some(p) = self.pending.get(&sequence)
            && p.filled == 0
            && p.extensions < MAX_EXTENSIONS
        {
            let timer = self.arm(sequence, Duration::from_millis(settings.deadline_ms), ctx);
            if let Some(p) = self.pending.get_mut(&sequence) {
                p.extensions += 1;
                p.timer = timer;
            }
            return;
        }
        let Some(p) = self.pending.remove(&sequence) else {
            return;
        };
        if by_deadline {
            self.stats.emit(DeadlineMissed {
                timeframe: &self.key.timeframe,
            });
        } else {
            ctx.cancel_future(p.timer);
        }
        if p.slots.iter().any(|s| matches!(s, Some(MemberStatus::Warming))) {
            self.stats.emit(EventWarming);
            return;
        }
        let mut members: Vec<MemberPrediction> = Vec::new();
        for (slot, s) in p.slots.into_iter().enumerate() {
            match s {
                Some(MemberStatus::Output(m)) => members.push(m),
                Some(MemberStatus::Rejected) => {
                    if let Some(fb) = self.fallback_for(slot, settings.fallback) {
                        members.push(fb);
                    }
                }
                _ => {}
            }
        }
        if members.is_empty() {
            self.stats.emit(EventWithoutMembers);
            return;
        }
        let expected = self.members.len() as u32;
        match combine(&members, &settings, settings.method, self.stacker.as_ref()) {
            Plan::Done(p_out, method) => self.publish(p.meta, members, expected, (p_out, method)),
            Plan::Stack { input, fallback } => {
                let (st, stats) = (self.stacker.clone(), self.stats.clone());
                let fut = async move {
                    match st {
                        Some(st) => st.run(input, &stats).await.ok(),
                        None => None,
                    }
                };
                self.stacking += 1;
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                    let combined = match res {
                        Some(probabilities) => (probabilities, Method::Stacking),
                        None => (fallback, Method::WeightedMean),
                    };
                    act.publish(p.meta, members, expected, combined);
                    act.stacking -= 1;
                    act.stop_if_drained(ctx);
                }));
            }
        }
    }

    fn fallback_for(&self, slot: usize, fb: Fallback) -> Option<MemberPrediction> {
        let probabilities = match fb {
            Fallback::Omit => return None,
            Fallback::Neutral => vec![0.0, 1.0, 0.0],
            Fallback::Uniform => vec![1.0 / 3.0; 3],
        };
        let g = self.members.get(slot)?;
        let mut p = MemberPrediction::new(&g.info, probabilities, true, 0, 0);
        p.model_version = g.version();
        Some(p)
    }

    fn publish(
        &mut self,
        meta: EventMeta,
        members: Vec<MemberPrediction>,
        expected: u32,
        combined: (Vec<f32>, Method),
    ) {
        let (probabilities, method) = combined;
        let published_at_ns = unix_ns();
        let feature_published_at_ns = meta.published_at_ns;
        let e = Ensemble::new(
            &self.key,
            meta,
            probabilities,
            members,
            expected,
            method.as_str(),
            published_at_ns,
        );
        self.publishers.publish(Arc::new(e));
        self.stats.emit(Predicted {
            timeframe: &self.key.timeframe,
            end_to_end_ns: (feature_published_at_ns > 0 && published_at_ns > feature_published_at_ns)
                .then_some(published_at_ns - feature_published_at_ns),
        });
    }
}

/// Weighted mean of the members' probabilities (weights from the settings).
pub fn weighted_mean(members: &[MemberPrediction], s: &AggregatorConfig) -> Vec<f32> {
    let mut out = vec![0.0f32; 3];
    let mut total = 0.0f32;
    for m in members {
        let w = s.weight(&m.model_id);
        total += w;
        for (o, p) in out.iter_mut().zip(&m.probabilities) {
            *o += w * p;
        }
    }
    if total > 0.0 {
        out.iter_mut().for_each(|o| *o /= total);
    } else {
        out = vec![1.0 / 3.0; 3];
    }
    out
}

/// Majority vote: the class most members pick; its share of the votes spread as probabilities
/// would hide the members' confidence, so the probabilities are the members' mean and the
/// direction is the vote (ties go to the class with the larger mean probability).
pub fn majority(members: &[MemberPrediction]) -> Vec<f32> {
    let mut votes = [0u32; 3];
    let mut mean = vec![0.0f32; 3];
    for m in members {
        votes[argmax(&m.probabilities).0.min(2)] += 1;
        for (o, p) in mean.iter_mut().zip(&m.probabilities) {
            *o += p / members.len() as f32;
        }
    }
    let top = votes.iter().copied().max().unwrap_or(0);
    let winner = (0..3)
        .filter(|&c| votes[c] == top)
        .max_by(|&a, &b| mean[a].total_cmp(&mean[b]))
        .unwrap_or(1);
    // Make the vote's winner the argmax while keeping a distribution: move mass to it.
    let (cur, cur_p) = argmax(&mean);
    if cur != winner {
        let boost = cur_p - mean[winner] + f32::EPSILON;
        mean[winner] += boost;
        let s: f32 = mean.iter().sum();
        mean.iter_mut().for_each(|v| *v /= s);
    }
    mean
}

/// The event's id: a UUID (RFC 9562 version 8, name-based) derived from (symbol, timeframe,
/// sequence). The same event gets the same id on every run and every transport, so consumers
/// can deduplicate, and `replay` output is reproducible.
pub fn event_id(key: &StreamKey, seq: u64) -> String {
    // FNV-1a over the name, then two SplitMix64 rounds for 128 well-mixed bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key
        .symbol
        .bytes()
        .chain([0])
        .chain(key.timeframe.bytes())
        .chain([0])
        .chain(seq.to_le_bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let hi = (mix(h) & 0xFFFF_FFFF_FFFF_0FFF) | 0x8000;
    let lo = (mix(h ^ 0xA5A5_A5A5_A5A5_A5A5) & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

impl Actor for Aggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(usize::MAX >> 4);
    }
}

impl Handler<StartEvent> for Aggregator {
    type Result = ();

    fn handle(&mut self, StartEvent(meta): StartEvent, ctx: &mut Context<Self>) {
        let deadline = Duration::from_millis(self.config.read().map(|s| s.deadline_ms).unwrap_or(100));
        let seq = meta.sequence;
        let timer = self.arm(seq, deadline, ctx);
        let slots = vec![None; self.members.len()];
        if let Some(old) = self.pending.insert(
            seq,
            Pending {
                meta,
                slots,
                filled: 0,
                timer,
                extensions: 0,
            },
        ) {
            // A repeated sequence cannot reach here (the router drops it); keep accounting exact.
            ctx.cancel_future(old.timer);
            self.stats.emit(EventWithoutMembers);
        }
    }
}

/// Evicted: the pending events end without a prediction (counted), and the aggregator stops.
impl Handler<Stop> for Aggregator {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        for (_, p) in self.pending.drain() {
            ctx.cancel_future(p.timer);
            self.stats.emit(EventEvicted);
        }
        ctx.stop();
    }
}

impl Handler<Drain> for Aggregator {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        self.draining = true;
        self.stop_if_drained(ctx);
    }
}

impl Handler<MemberDone> for Aggregator {
    type Result = ();

    fn handle(&mut self, m: MemberDone, ctx: &mut Context<Self>) {
        let Some(p) = self.pending.get_mut(&m.sequence) else {
            return;
        };
        let Some(slot) = p.slots.get_mut(m.member) else {
            return;
        };
        if slot.is_none() {
            p.filled += 1;
        }
        *slot = Some(m.status);
        if p.filled == p.slots.len() {
            self.finalize(m.sequence, false, ctx);
            self.stop_if_drained(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Direction;

    fn member(id: &str, p: [f32; 3]) -> MemberPrediction {
        let (i, c) = argmax(&p);
        MemberPrediction {
            model_id: id.into(),
            model_version: "1".into(),
            model_family: "x".into(),
            probabilities: p.to_vec(),
            direction: Direction::from_index(i),
            confidence: c,
            fallback: false,
            inference_us: 0,
            batch_size: 1,
            contributions: Vec::new(),
            forecasts: Vec::new(),
            patterns: Vec::new(),
        }
    }

    #[test]
    fn test_weighted_mean_uses_configured_weights() {
        let mut s = AggregatorConfig::default();
        s.weights.insert("a".into(), 3.0);
        let p = weighted_mean(&[member("a", [1.0, 0.0, 0.0]), member("b", [0.0, 0.0, 1.0])], &s);
        assert_eq!(p, vec![0.75, 0.0, 0.25]);
    }

    #[test]
    fn test_majority_follows_the_votes_not_the_mean() {
        let ms = [
            member("a", [0.4, 0.3, 0.3]),
            member("b", [0.4, 0.3, 0.3]),
            member("c", [0.0, 0.0, 1.0]),
        ];
        let p = majority(&ms);
        assert_eq!(argmax(&p).0, 0, "two of three vote short: {p:?}");
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn test_event_ids_are_stable_per_event_and_distinct_across_events() {
        let k = StreamKey::new("AAPL", "1d");
        assert_eq!(event_id(&k, 7), event_id(&k, 7));
        assert_ne!(event_id(&k, 7), event_id(&k, 8));
        assert_ne!(event_id(&k, 7), event_id(&StreamKey::new("AAPL", "1h"), 7));
        let id = event_id(&k, 7);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "8", "version 8");
    }

    #[test]
    fn test_a_weight_that_overflows_f32_is_refused() {
        let mut s = AggregatorConfig::default();
        s.weights.insert("a".into(), 1e300);
        let p = s.problems("aggregator", &["a".into()]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("aggregator.weights.a"), "{p:?}");
    }

    #[test]
    fn test_settings_problems_name_unknown_models_and_bad_weights() {
        let mut s = AggregatorConfig::default();
        s.weights.insert("nope".into(), -1.0);
        s.deadline_ms = 0;
        assert_eq!(s.problems("aggregator", &["a".into()]).len(), 3);
    }
}

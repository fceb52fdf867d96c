//! Aggregator: one per (symbol, timeframe). Collects the members' outputs of each event and
//! emits one ensemble prediction when every expected member answered or the deadline passed.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::clock::unix_ns;
use crate::executor::ExecutorHandle;
use crate::gate::ModelGate;
use crate::messages::{EventMeta, MemberDone, MemberStatus, Publish, StartEvent};
use crate::telemetry::{self as t, PipelineStats};
use crate::types::{Direction, Ensemble, MemberPrediction, StreamKey, argmax};

/// How members are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    WeightedMean,
    Majority,
    Stacking,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::WeightedMean => "weighted_mean",
            Method::Majority => "majority",
            Method::Stacking => "stacking",
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

/// Ensemble settings; changeable at run time (read at every finalisation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnsembleSettings {
    pub method: Method,
    /// Weight per model id for `weighted_mean`; a model not named weighs 1.
    pub weights: std::collections::BTreeMap<String, f64>,
    /// How long an event waits for its members.
    pub deadline_ms: u64,
    pub fallback: Fallback,
}

impl Default for EnsembleSettings {
    fn default() -> Self {
        EnsembleSettings {
            method: Method::WeightedMean,
            weights: Default::default(),
            deadline_ms: 100,
            fallback: Fallback::Omit,
        }
    }
}

impl EnsembleSettings {
    pub fn problems(&self, prefix: &str, known_models: &[String]) -> Vec<String> {
        let mut p = Vec::new();
        for (m, w) in &self.weights {
            if !known_models.iter().any(|k| k == m) {
                p.push(format!("{prefix}.weights names unknown model {m:?}"));
            }
            if !(w.is_finite() && *w >= 0.0) {
                p.push(format!("{prefix}.weights.{m} must be finite and >= 0, got {w}"));
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

    pub fn weight(&self, model: &str) -> f32 {
        self.weights.get(model).copied().unwrap_or(1.0) as f32
    }
}

/// The stacking model: its executor and, for each of its inputs in order, the member slot.
#[derive(Clone, Debug)]
pub struct Stacker {
    pub executor: ExecutorHandle,
    pub info: crate::types::ModelInfo,
    /// Model index (in the pipeline's model list) of each stacker input, in order.
    pub inputs: Vec<usize>,
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
    settings: Arc<RwLock<EnsembleSettings>>,
    stacker: Option<Stacker>,
    publishers: Arc<[Recipient<Publish>]>,
    pending: HashMap<u64, Pending>,
    stats: Arc<PipelineStats>,
}

impl Aggregator {
    pub fn new(
        key: StreamKey,
        members: Vec<Arc<ModelGate>>,
        settings: Arc<RwLock<EnsembleSettings>>,
        stacker: Option<Stacker>,
        publishers: Arc<[Recipient<Publish>]>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        Aggregator {
            key,
            members,
            settings,
            stacker,
            publishers,
            pending: HashMap::new(),
            stats,
        }
    }

    fn finalize(&mut self, sequence: u64, by_deadline: bool, ctx: &mut Context<Self>) {
        let settings = self.settings.read().map(|s| s.clone()).unwrap_or_default();
        if by_deadline
            && let Some(p) = self.pending.get_mut(&sequence)
            && p.filled == 0
            && p.extensions < MAX_EXTENSIONS
        {
            p.extensions += 1;
            let deadline = Duration::from_millis(settings.deadline_ms);
            p.timer = ctx.run_later(deadline, move |act, ctx| act.finalize(sequence, true, ctx));
            return;
        }
        let Some(p) = self.pending.remove(&sequence) else {
            return;
        };
        if by_deadline {
            PipelineStats::inc(&self.stats.deadline_misses);
            metrics::counter!(t::AGGREGATOR_DEADLINE_MISSES, "timeframe" => self.key.timeframe.to_string())
                .increment(1);
        } else {
            ctx.cancel_future(p.timer);
        }
        if p.slots.iter().any(|s| matches!(s, Some(MemberStatus::Warming))) {
            PipelineStats::inc(&self.stats.warming);
            metrics::counter!(t::EVENTS_WARMING).increment(1);
            PipelineStats::inc(&self.stats.events_finished);
            return;
        }
        let mut members: Vec<(usize, MemberPrediction)> = Vec::new();
        for (slot, s) in p.slots.into_iter().enumerate() {
            match s {
                Some(MemberStatus::Output(m)) => members.push((slot, m)),
                Some(MemberStatus::Rejected) => {
                    if let Some(fb) = self.fallback_for(slot, settings.fallback) {
                        members.push((slot, fb));
                    }
                }
                _ => {}
            }
        }
        if members.is_empty() {
            PipelineStats::inc(&self.stats.no_members);
            metrics::counter!(t::EVENTS_DROPPED, "reason" => "no_members").increment(1);
            PipelineStats::inc(&self.stats.events_finished);
            return;
        }
        let expected = self.members.len() as u32;
        if settings.method == Method::Stacking
            && let Some(input) = self.stacker_input(&members)
            && let Some(st) = self.stacker.clone()
        {
            let exec = st.executor.clone();
            let fut = async move { exec.infer(input).await };
            ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
                let combined = match res {
                    Ok(out) => (out.probabilities, Method::Stacking),
                    Err(e) => {
                        metrics::counter!(t::INFERENCE_ERRORS, "model" => st.info.id.to_string(), "code" => e.code())
                            .increment(1);
                        (weighted_mean(&members, &settings), Method::WeightedMean)
                    }
                };
                act.publish(p.meta, members, expected, combined);
            }));
            return;
        }
        let combined = match settings.method {
            Method::Majority => (majority(&members), Method::Majority),
            // Stacking without all real member outputs falls back to the weighted mean.
            Method::WeightedMean | Method::Stacking => {
                (weighted_mean(&members, &settings), Method::WeightedMean)
            }
        };
        self.publish(p.meta, members, expected, combined);
    }

    fn fallback_for(&self, slot: usize, fb: Fallback) -> Option<MemberPrediction> {
        let probabilities = match fb {
            Fallback::Omit => return None,
            Fallback::Neutral => vec![0.0, 1.0, 0.0],
            Fallback::Uniform => vec![1.0 / 3.0; 3],
        };
        let info = &self.members.get(slot)?.info;
        let (i, confidence) = argmax(&probabilities);
        Some(MemberPrediction {
            model_id: info.id.clone(),
            model_version: info.version.clone(),
            model_kind: info.family.clone(),
            probabilities,
            direction: Direction::from_index(i),
            confidence,
            fallback: true,
            inference_us: 0,
            batch_size: 0,
        })
    }

    /// The stacker's input: every input member present with a real (non-fallback) output.
    fn stacker_input(&self, members: &[(usize, MemberPrediction)]) -> Option<Vec<f32>> {
        let st = self.stacker.as_ref()?;
        let mut input = Vec::with_capacity(st.inputs.len() * 3);
        for &model in &st.inputs {
            let (_, m) = members
                .iter()
                .find(|(slot, m)| self.members.get(*slot).is_some_and(|g| g.index == model) && !m.fallback)?;
            input.extend_from_slice(&m.probabilities);
        }
        Some(input)
    }

    fn publish(
        &mut self,
        meta: EventMeta,
        members: Vec<(usize, MemberPrediction)>,
        expected: u32,
        combined: (Vec<f32>, Method),
    ) {
        let (probabilities, method) = combined;
        let (i, confidence) = argmax(&probabilities);
        let direction = Direction::from_index(i);
        let published_at_ns = unix_ns();
        let e = Ensemble {
            event_id: event_id(&self.key, meta.sequence),
            symbol: self.key.symbol.clone(),
            timeframe: self.key.timeframe.clone(),
            event_time_ms: meta.event_time_ms,
            sequence: meta.sequence,
            direction,
            confidence,
            probabilities,
            models_expected: expected,
            models_used: members.len() as u32,
            members: members.into_iter().map(|(_, m)| m).collect(),
            method: method.as_str(),
            correlation_id: meta.correlation_id,
            feature_published_at_ns: meta.published_at_ns,
            published_at_ns,
            service_version: env!("CARGO_PKG_VERSION"),
            signal: direction.signal(),
            ack: meta.ack,
        };
        if meta.published_at_ns > 0 && published_at_ns > meta.published_at_ns {
            metrics::histogram!(t::END_TO_END_SECONDS, "timeframe" => self.key.timeframe.to_string())
                .record((published_at_ns - meta.published_at_ns) as f64 / 1e9);
        }
        let e = Arc::new(e);
        for p in self.publishers.iter() {
            p.do_send(Publish(e.clone()));
        }
        PipelineStats::inc(&self.stats.predictions);
        PipelineStats::inc(&self.stats.events_finished);
    }
}

/// Weighted mean of the members' probabilities (weights from the settings).
pub fn weighted_mean(members: &[(usize, MemberPrediction)], s: &EnsembleSettings) -> Vec<f32> {
    let mut out = vec![0.0f32; 3];
    let mut total = 0.0f32;
    for (_, m) in members {
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
pub fn majority(members: &[(usize, MemberPrediction)]) -> Vec<f32> {
    let mut votes = [0u32; 3];
    let mut mean = vec![0.0f32; 3];
    for (_, m) in members {
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
        let deadline = Duration::from_millis(self.settings.read().map(|s| s.deadline_ms).unwrap_or(100));
        let seq = meta.sequence;
        let timer = ctx.run_later(deadline, move |act, ctx| act.finalize(seq, true, ctx));
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
            PipelineStats::inc(&self.stats.events_finished);
        }
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, p: [f32; 3]) -> (usize, MemberPrediction) {
        let (i, c) = argmax(&p);
        (
            0,
            MemberPrediction {
                model_id: id.into(),
                model_version: "1".into(),
                model_kind: "x".into(),
                probabilities: p.to_vec(),
                direction: Direction::from_index(i),
                confidence: c,
                fallback: false,
                inference_us: 0,
                batch_size: 1,
            },
        )
    }

    #[test]
    fn test_weighted_mean_uses_configured_weights() {
        let mut s = EnsembleSettings::default();
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
    fn test_settings_problems_name_unknown_models_and_bad_weights() {
        let mut s = EnsembleSettings::default();
        s.weights.insert("nope".into(), -1.0);
        s.deadline_ms = 0;
        assert_eq!(s.problems("aggregator", &["a".into()]).len(), 3);
    }
}

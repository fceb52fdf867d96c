//! ModelActor: one per (symbol, timeframe, model). Keeps the lookback window of the stream,
//! builds the raw input row and asks the model's executor; never runs a model itself.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use crate::events::{CallFailed, CallShed};
use crate::executor::{ExecError, RowOutput};
use crate::experiment::{Candidate, ShadowOutput, VersionStats};
use crate::gate::{ModelGate, Ticket};
use crate::messages::{MemberDone, MemberStatus, ModelFailed, Stop};
use crate::telemetry::PipelineStats;
use crate::types::{MemberPrediction, Vector};

pub struct ModelActor {
    gate: Arc<ModelGate>,
    /// This model's position in the stream's member list (the aggregator's slot).
    member: usize,
    aggregator: Recipient<MemberDone>,
    supervisor: Recipient<ModelFailed>,
    /// The last `window` vectors of the stream, oldest first.
    window: VecDeque<Arc<[f32]>>,
    mailbox_capacity: usize,
    stats: Arc<PipelineStats>,
    /// The stream's bucket for experiments (`experiment::bucket`), from its first vector.
    bucket: Option<u32>,
}

impl ModelActor {
    /// A fresh actor; each call goes to the model's current executor (from its gate).
    pub fn new(
        gate: Arc<ModelGate>,
        member: usize,
        aggregator: Recipient<MemberDone>,
        supervisor: Recipient<ModelFailed>,
        mailbox_capacity: usize,
        stats: Arc<PipelineStats>,
    ) -> Self {
        let window = VecDeque::with_capacity(gate.info.window);
        ModelActor {
            gate,
            member,
            aggregator,
            supervisor,
            window,
            mailbox_capacity,
            stats,
            bucket: None,
        }
    }

    fn done(&self, sequence: u64, status: MemberStatus) {
        self.aggregator.do_send(MemberDone {
            sequence,
            member: self.member,
            status,
        });
    }

    fn reporter(&self, version: Arc<str>, calls: Arc<VersionStats>, candidate: bool) -> Reporter {
        Reporter {
            gate: self.gate.clone(),
            version,
            calls,
            candidate,
            member: self.member,
            aggregator: self.aggregator.clone(),
            supervisor: self.supervisor.clone(),
            stats: self.stats.clone(),
        }
    }
}

/// Finishes a call: answers the aggregator, records the outcome on the gate, reports failures
/// to the supervisor. It owns clones, not the actor, so an answer in flight survives the actor
/// being stopped by a restart.
struct Reporter {
    gate: Arc<ModelGate>,
    /// The version the call went to (a swap may land while it runs).
    version: Arc<str>,
    /// That version's call counts (a canary compares them).
    calls: Arc<VersionStats>,
    /// The call went to an experiment's candidate: kept out of the model's breaker.
    candidate: bool,
    member: usize,
    aggregator: Recipient<MemberDone>,
    supervisor: Recipient<ModelFailed>,
    stats: Arc<PipelineStats>,
}

impl Reporter {
    fn finish(
        &self,
        ticket: Ticket,
        sequence: u64,
        result: Result<RowOutput, ExecError>,
        latency: std::time::Duration,
    ) {
        let status = match result {
            Ok(out) => {
                // Slow means the model computed slowly (its batch's forward pass), not that the
                // call waited in a queue behind a burst: queueing is back-pressure, not a fault.
                let _ = latency;
                self.calls.ok(out.inference_us);
                if self.candidate {
                    self.gate.release(ticket);
                } else {
                    self.gate.record(
                        ticket,
                        true,
                        std::time::Duration::from_micros(out.inference_us as u64),
                        None,
                    );
                }
                let mut p = MemberPrediction::new(
                    &self.gate.info,
                    out.probabilities,
                    false,
                    out.inference_us,
                    out.batch_size,
                );
                p.model_version = self.version.clone();
                p.contributions = out.contributions;
                p.forecasts = out.forecasts;
                p.patterns = out.patterns;
                MemberStatus::Output(p)
            }
            Err(ExecError::QueueFull) => {
                // Shed under load: counted, the member misses this event, nobody is at fault
                // (but a candidate's full queue, a hung one's too, is the canary's evidence).
                if self.candidate {
                    self.calls.fault();
                }
                self.gate.release(ticket);
                self.stats.emit(CallShed {
                    model: &self.gate.info.id,
                });
                MemberStatus::Failed("queue_full")
            }
            Err(e) => {
                let error = e.to_string();
                if e.is_model_fault() {
                    self.calls.fault();
                }
                if self.candidate {
                    // A candidate's fault is the canary's evidence, not the serving version's.
                    self.gate.release(ticket);
                    self.stats.emit(CallFailed {
                        model: &self.gate.info.id,
                        code: e.code(),
                        error: &error,
                    });
                    self.aggregator.do_send(MemberDone {
                        sequence,
                        member: self.member,
                        status: MemberStatus::Failed(e.code()),
                    });
                    return;
                }
                if e.is_model_fault() {
                    self.gate.record(ticket, false, latency, Some(&error));
                } else {
                    // The row was refused, not the model at fault: a probe slot goes back.
                    self.gate.release(ticket);
                }
                self.stats.emit(CallFailed {
                    model: &self.gate.info.id,
                    code: e.code(),
                    error: &error,
                });
                // A failed call leaves the window intact (it is not what failed); the report
                // lets the supervisor act, and its restart gives every actor fresh state.
                self.supervisor.do_send(ModelFailed {
                    model: self.gate.index,
                    error,
                });
                MemberStatus::Failed(e.code())
            }
        };
        self.aggregator.do_send(MemberDone {
            sequence,
            member: self.member,
            status,
        });
    }
}

impl Actor for ModelActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
    }
}

impl Handler<Vector> for ModelActor {
    type Result = ();

    fn handle(&mut self, v: Vector, _: &mut Context<Self>) {
        let info = &self.gate.info;
        if self.window.len() == info.window {
            self.window.pop_front();
        }
        self.window.push_back(v.values.clone());
        if v.refill {
            // History that only rebuilds the window: no call, no answer (the router started
            // no event for it).
            return;
        }
        if self.window.len() < info.window {
            self.done(v.sequence, MemberStatus::Warming);
            return;
        }
        // The stream's version and executor: a restart, a version swap or an experiment
        // replaces them in the gate, the window stays.
        let bucket = *self
            .bucket
            .get_or_insert_with(|| crate::experiment::bucket(&v.key));
        let route = self.gate.route(bucket);
        // The model's breaker admits the serving version's calls; a candidate's are the
        // canary's evidence and never take (or wait for) one of its probe slots.
        let ticket = if route.candidate {
            Ticket::outside_the_breaker()
        } else {
            self.gate.admit()
        };
        if ticket.rejected() {
            self.done(v.sequence, MemberStatus::Rejected);
            return;
        }
        let mut raw = Vec::with_capacity(info.window * info.features);
        for w in &self.window {
            raw.extend_from_slice(w);
        }
        let started = Instant::now();
        let reporter = self.reporter(route.version.clone(), route.stats, route.candidate);
        let sequence = v.sequence;
        if let Some(c) = route.shadow {
            shadow(&self.gate, c, &v, route.version, raw.clone());
        }
        match route.executor.submit(raw) {
            Ok(rx) => {
                actix::spawn(async move {
                    let res = rx.await.unwrap_or(Err(ExecError::Down));
                    reporter.finish(ticket, sequence, res, started.elapsed());
                });
            }
            Err(e) => reporter.finish(ticket, sequence, Err(e), started.elapsed()),
        }
    }
}

/// Runs a shadow candidate on the same window: its output goes to the shadow sink, never to
/// the aggregator; its failures are counted on the candidate alone.
fn shadow(gate: &Arc<ModelGate>, c: Candidate, v: &crate::types::Vector, incumbent: Arc<str>, raw: Vec<f32>) {
    let (ok, failed) = (c.shadow_ok.clone(), c.shadow_failed.clone());
    let out = ShadowOutput {
        key: v.key.clone(),
        sequence: v.sequence,
        event_time_ms: v.event_time_ms,
        correlation_id: v.correlation_id.clone(),
        close: v.close,
        incumbent,
        prediction: MemberPrediction::new(&gate.info, Vec::new(), false, 0, 0),
    };
    let rx = match c.executor.submit(raw) {
        Ok(rx) => rx,
        Err(e) => {
            if e.is_model_fault() {
                c.stats.fault();
            }
            failed.increment(1);
            return;
        }
    };
    actix::spawn(async move {
        match rx.await.unwrap_or(Err(ExecError::Down)) {
            Ok(r) => {
                c.stats.ok(r.inference_us);
                let mut out = out;
                let info = &out.prediction;
                let mut p = MemberPrediction {
                    probabilities: r.probabilities,
                    contributions: r.contributions,
                    forecasts: r.forecasts,
                    patterns: r.patterns,
                    inference_us: r.inference_us,
                    batch_size: r.batch_size,
                    model_version: c.version.clone(),
                    ..info.clone()
                };
                let (i, conf) = crate::types::argmax(&p.probabilities);
                p.direction = crate::types::Direction::from_index(i);
                p.confidence = conf;
                out.prediction = p;
                ok.increment(1);
                c.shadow.shadow(out);
            }
            Err(e) => {
                if e.is_model_fault() {
                    c.stats.fault();
                }
                failed.increment(1);
            }
        }
    });
}

impl Handler<Stop> for ModelActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

//! Supervisor: watches every model (its actors and its executor) through the model's gate.
//! When a circuit opens it waits out the backoff, then restarts the model: a fresh executor
//! with the model reloaded when the old one died, and fresh model actors in every stream.
//! The breaker then lets probes through (half-open). Too many restarts park the model as
//! faulted until an operator resets it. A failing model never stops the others.
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::breaker::CircuitState;
use crate::executor::{self, BackendFactory, BatchConfig, BatchObserver, ExecutorHandle};
use crate::gate::ModelGate;
use crate::messages::{CircuitChanged, ModelFailed, ResetModel, RestartModel};
use crate::router::Router;
use crate::telemetry as t;

pub struct SupervisedModel {
    pub gate: Arc<ModelGate>,
    pub factory: BackendFactory,
    pub executor: ExecutorHandle,
}

pub struct Supervisor {
    models: Vec<SupervisedModel>,
    router: Option<Addr<Router>>,
    batch: Arc<std::sync::RwLock<BatchConfig>>,
    observer: Arc<dyn BatchObserver>,
    /// A restart already scheduled per model.
    scheduled: Vec<Option<SpawnHandle>>,
}

/// Hands the supervisor the router once both exist.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetRouter(pub Addr<Router>);

/// Current executor handles (for batching changes and health).
#[derive(Message)]
#[rtype(result = "Vec<ExecutorHandle>")]
pub struct GetExecutors;

impl Supervisor {
    pub fn new(
        models: Vec<SupervisedModel>,
        batch: Arc<std::sync::RwLock<BatchConfig>>,
        observer: Arc<dyn BatchObserver>,
    ) -> Self {
        let n = models.len();
        Supervisor {
            models,
            router: None,
            batch,
            observer,
            scheduled: vec![None; n],
        }
    }

    fn restart(&mut self, model: usize, ctx: &mut Context<Self>) {
        self.scheduled[model] = None;
        let Some(m) = self.models.get_mut(model) else {
            return;
        };
        if m.gate.state() == CircuitState::Faulted {
            return;
        }
        if let Some(tr) = m.gate.note_restart() {
            metrics::gauge!(t::CIRCUIT_STATE, "model" => m.gate.info.id.to_string()).set(tr.to.gauge());
            tracing::error!(model = %m.gate.info.id, restarts = m.gate.restarts.load(std::sync::atomic::Ordering::Relaxed), "restart intensity exceeded; model parked as faulted until reset");
            return;
        }
        metrics::counter!(t::MODEL_RESTARTS, "model" => m.gate.info.id.to_string()).increment(1);
        if m.executor.is_down() {
            let batch = self.batch.read().map(|b| b.clone()).unwrap_or_default();
            let (handle, _ready) =
                executor::spawn(&m.gate.info.id, m.factory.clone(), batch, self.observer.clone());
            m.executor = handle;
            tracing::warn!(model = %m.gate.info.id, "executor was down; started a fresh one with the model reloaded");
        }
        tracing::info!(model = %m.gate.info.id, "restarting model actors with fresh state");
        if let Some(r) = &self.router {
            r.do_send(RestartModel {
                model,
                handle: m.executor.clone(),
            });
        }
        let _ = ctx;
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

impl Handler<SetRouter> for Supervisor {
    type Result = ();

    fn handle(&mut self, SetRouter(r): SetRouter, _: &mut Context<Self>) {
        self.router = Some(r);
    }
}

impl Handler<GetExecutors> for Supervisor {
    type Result = MessageResult<GetExecutors>;

    fn handle(&mut self, _: GetExecutors, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.models.iter().map(|m| m.executor.clone()).collect())
    }
}

impl Handler<CircuitChanged> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: CircuitChanged, ctx: &mut Context<Self>) {
        let Some(model) = self.models.get(m.model) else {
            return;
        };
        let tr = m.transition;
        tracing::warn!(
            model = %model.gate.info.id,
            from = tr.from.as_str(),
            to = tr.to.as_str(),
            reason = tr.reason.map(|r| r.as_str()).unwrap_or(""),
            backoff_ms = tr.backoff.map(|b| b.as_millis() as u64).unwrap_or(0),
            "circuit transition"
        );
        if tr.to == CircuitState::Open {
            let backoff = tr.backoff.unwrap_or(Duration::from_millis(500));
            if let Some(h) = self.scheduled[m.model].take() {
                ctx.cancel_future(h);
            }
            let idx = m.model;
            self.scheduled[m.model] = Some(ctx.run_later(backoff, move |act, ctx| act.restart(idx, ctx)));
        }
    }
}

impl Handler<ModelFailed> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: ModelFailed, _: &mut Context<Self>) {
        if let Some(model) = self.models.get(m.model) {
            tracing::debug!(model = %model.gate.info.id, error = %m.error, "model call failed");
            if let Ok(mut g) = model.gate.last_error.lock() {
                *g = Some(m.error);
            }
        }
    }
}

impl Handler<ResetModel> for Supervisor {
    type Result = Result<(), String>;

    fn handle(&mut self, ResetModel(id): ResetModel, ctx: &mut Context<Self>) -> Self::Result {
        let idx = self
            .models
            .iter()
            .position(|m| *m.gate.info.id == *id)
            .ok_or_else(|| format!("unknown model {id:?}"))?;
        if let Some(h) = self.scheduled[idx].take() {
            ctx.cancel_future(h);
        }
        let m = &self.models[idx];
        if let Some(tr) = m.gate.reset() {
            metrics::gauge!(t::CIRCUIT_STATE, "model" => m.gate.info.id.to_string()).set(tr.to.gauge());
        }
        tracing::info!(model = %id, "model reset by operator");
        // A reset model starts clean: reload if its executor died, fresh actors.
        let m = &mut self.models[idx];
        if m.executor.is_down() {
            let batch = self.batch.read().map(|b| b.clone()).unwrap_or_default();
            let (handle, _ready) =
                executor::spawn(&m.gate.info.id, m.factory.clone(), batch, self.observer.clone());
            m.executor = handle;
        }
        if let Some(r) = &self.router {
            r.do_send(RestartModel {
                model: idx,
                handle: m.executor.clone(),
            });
        }
        Ok(())
    }
}

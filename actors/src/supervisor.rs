//! Supervisor: watches every model (the members and the stacker) through the model's gate.
//! When a circuit opens it waits out the backoff on the injected clock, then restarts the
//! model: a fresh executor with the model reloaded when the old one died, swapped into the
//! gate, where every model actor takes it from on its next call. The streams' windows are
//! kept: they are the streams' features, not the model's state. The breaker then lets probes
//! through (half-open). Too many restarts park the model as faulted until an operator resets
//! it. A failing model never stops the others.
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::breaker::CircuitState;
use crate::clock::Clock;
use crate::events::ModelRestarted;
use crate::executor::{self, BatchObserver, ExecutorConfig};
use crate::gate::ModelGate;
use crate::messages::{CircuitChanged, ModelFailed, ResetModel, SwapVersion};
use crate::telemetry::PipelineStats;

pub struct SupervisedModel {
    /// Its serving version's loader (`ModelGate::factory`) loads it again when its executor
    /// died.
    pub gate: Arc<ModelGate>,
}

pub struct Supervisor {
    /// Members first (indexed like the gates), then the stacker, if any.
    models: Vec<SupervisedModel>,
    /// The batching limits in force (a fresh executor starts with them).
    executor_config: Arc<std::sync::RwLock<ExecutorConfig>>,
    observer: Arc<dyn BatchObserver>,
    clock: Arc<dyn Clock>,
    stats: Arc<PipelineStats>,
    /// A restart already scheduled per model.
    scheduled: Vec<Option<SpawnHandle>>,
}

impl Supervisor {
    pub fn new(
        models: Vec<SupervisedModel>,
        executor_config: Arc<std::sync::RwLock<ExecutorConfig>>,
        observer: Arc<dyn BatchObserver>,
        clock: Arc<dyn Clock>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        let n = models.len();
        Supervisor {
            models,
            executor_config,
            observer,
            clock,
            stats,
            scheduled: (0..n).map(|_| None).collect(),
        }
    }

    /// A fresh executor when the old one is down (the actors take it from the gate). `restart`:
    /// counted as a restart (an operator reset is not one).
    fn revive(&mut self, i: usize, restart: bool) {
        let Some(m) = self.models.get(i) else { return };
        let reloaded = m.gate.executor().is_down();
        if reloaded {
            let config = self.executor_config.read().map(|b| b.clone()).unwrap_or_default();
            // The version serving now (an operator may have swapped it in since start-up).
            let factory = m.gate.factory();
            let (handle, _ready) = executor::spawn(
                &m.gate.info.id,
                factory,
                config,
                self.observer.clone(),
                self.clock.clone(),
            );
            m.gate.set_executor(handle);
        }
        if restart {
            self.stats.emit(ModelRestarted {
                model: &m.gate.info.id,
                reloaded,
            });
        }
    }

    fn restart(&mut self, i: usize) {
        self.scheduled[i] = None;
        let Some(m) = self.models.get(i) else { return };
        if m.gate.state() == CircuitState::Faulted {
            return;
        }
        if m.gate.note_restart().is_some() {
            tracing::error!(model = %m.gate.info.id, restarts = m.gate.restarts.load(std::sync::atomic::Ordering::Relaxed), "restart intensity exceeded; model parked as faulted until reset");
            return;
        }
        self.revive(i, true);
    }
}

impl Supervisor {
    /// The forward-pass watchdog: every quarter of the timeout, an executor whose pass has run
    /// longer than the timeout is given up: marked down (calls go elsewhere at once), its
    /// circuit opened; the restart after the backoff starts a fresh one, because it is down.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        let timeout = self
            .executor_config
            .read()
            .map(|c| c.forward_timeout_ms)
            .unwrap_or_default();
        if timeout > 0 {
            self.give_up_hung(Duration::from_millis(timeout));
        }
        let period = Duration::from_millis((timeout / 4).clamp(10, 1_000));
        let sleep = self.clock.sleep(period);
        ctx.spawn(sleep.into_actor(self).map(|_, act, ctx| act.watch(ctx)));
    }

    fn give_up_hung(&mut self, timeout: Duration) {
        let now = self.clock.now().as_nanos() as u64 + 1;
        for m in &self.models {
            // An experiment's candidate hung: given up the same way (its calls then fail,
            // which a canary weighs), but the serving version's breaker is not its to open.
            if let Some(c) = m.gate.candidate() {
                let st = c.executor.state();
                let since = st.forward_started_ns.load(std::sync::atomic::Ordering::Acquire);
                if since != 0
                    && !st.abandoned.load(std::sync::atomic::Ordering::Acquire)
                    && Duration::from_nanos(now.saturating_sub(since)) > timeout
                {
                    st.abandoned.store(true, std::sync::atomic::Ordering::Release);
                    st.ready.store(false, std::sync::atomic::Ordering::Release);
                    st.down.store(true, std::sync::atomic::Ordering::Release);
                    tracing::error!(model = %m.gate.info.id, candidate = %c.version, "hung candidate: executor given up");
                }
            }
            let h = m.gate.executor();
            let st = h.state();
            let since = st.forward_started_ns.load(std::sync::atomic::Ordering::Acquire);
            if since == 0 || st.abandoned.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            let running = Duration::from_nanos(now.saturating_sub(since));
            if running <= timeout {
                continue;
            }
            st.abandoned.store(true, std::sync::atomic::Ordering::Release);
            st.ready.store(false, std::sync::atomic::Ordering::Release);
            st.down.store(true, std::sync::atomic::Ordering::Release);
            let error = format!(
                "forward pass running for {} ms (timeout {} ms): executor given up",
                running.as_millis(),
                timeout.as_millis()
            );
            tracing::error!(model = %m.gate.info.id, %error, "hung model");
            if let Ok(mut g) = m.gate.last_error.lock() {
                *g = Some(error);
            }
            m.gate.force_open(crate::breaker::TripReason::HungForward);
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let on = self
            .executor_config
            .read()
            .map(|c| c.forward_timeout_ms > 0)
            .unwrap_or(false);
        if on {
            self.watch(ctx);
        }
    }
}

impl Handler<CircuitChanged> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: CircuitChanged, ctx: &mut Context<Self>) {
        // Members and the stacker have distinct gate indexes (the stacker's is after the
        // members'), so the index alone finds the model.
        let Some(i) = self.models.iter().position(|x| x.gate.index == m.model) else {
            return;
        };
        if m.transition.to == CircuitState::Open {
            let backoff = m.transition.backoff.unwrap_or(Duration::from_millis(500));
            if let Some(h) = self.scheduled[i].take() {
                ctx.cancel_future(h);
            }
            let sleep = self.clock.sleep(backoff);
            self.scheduled[i] = Some(ctx.spawn(sleep.into_actor(self).map(move |_, act, _| act.restart(i))));
        }
    }
}

impl Handler<ModelFailed> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: ModelFailed, _: &mut Context<Self>) {
        if let Some(model) = self.models.iter().find(|x| x.gate.index == m.model)
            && let Ok(mut g) = model.gate.last_error.lock()
        {
            *g = Some(m.error);
        }
    }
}

impl Handler<SwapVersion> for Supervisor {
    type Result = Result<Arc<str>, String>;

    fn handle(&mut self, m: SwapVersion, _: &mut Context<Self>) -> Self::Result {
        let g = &self
            .models
            .iter()
            .find(|s| *s.gate.info.id == *m.model)
            .ok_or_else(|| format!("unknown model {:?}", m.model))?
            .gate;
        // The old version answers what it was given, and stays loaded, idle, within the cap.
        let replaced = g.swap(m.version.clone(), m.executor, m.factory);
        // The new version starts with a closed circuit: the old one's failures are not its.
        g.reset();
        tracing::info!(model = %m.model, from = %replaced, to = %m.version, "model version swapped");
        Ok(replaced)
    }
}

impl Handler<ResetModel> for Supervisor {
    type Result = Result<(), String>;

    fn handle(&mut self, ResetModel(id): ResetModel, ctx: &mut Context<Self>) -> Self::Result {
        let i = self
            .models
            .iter()
            .position(|m| *m.gate.info.id == *id)
            .ok_or_else(|| format!("unknown model {id:?}"))?;
        if let Some(h) = self.scheduled[i].take() {
            ctx.cancel_future(h);
        }
        self.models[i].gate.reset();
        tracing::info!(model = %id, "model reset by operator");
        // A reset model starts clean: reloaded if its executor died, fresh actors.
        self.revive(i, false);
        Ok(())
    }
}

//! Builds and runs the actor graph: executors (loaded and warmed), gates, supervisor, router.
//! Everything a bus adapter or the HTTP layer needs is on [`Pipeline`].
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;

use crate::aggregator::{AggregatorConfig, Stacker};
use crate::breaker::BreakerConfig;
use crate::clock::Clock;
use crate::executor::{self, BackendFactory, BatchObserver, ExecutorConfig, ExecutorHandle};
use crate::gate::ModelGate;
use crate::messages::{Ingest, Publishers, Release, ResetModel, SetEnabled, SwapVersion};
use crate::router::{Router, RouterConfig};
use crate::supervisor::{SupervisedModel, Supervisor};
use crate::telemetry::PipelineStats;
use crate::types::{ModelInfo, Vector};

/// A model to run: what it is and how to load it.
pub struct ModelSpec {
    pub info: ModelInfo,
    pub factory: BackendFactory,
}

/// The stacking model and the member ids of its inputs, in order.
pub struct StackerSpec {
    pub model: ModelSpec,
    pub inputs: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PipelineConfig {
    pub router: RouterConfig,
    pub executor: ExecutorConfig,
    pub breaker: BreakerConfig,
    pub aggregator: AggregatorConfig,
    /// The weights of the `adaptive` method (updated by the outcomes thread).
    pub adaptive: Arc<crate::adaptive::AdaptiveWeights>,
}

#[derive(Clone)]
pub struct Pipeline {
    /// The router's intake (awaited: its bounded mailbox is the back-pressure).
    router: Recipient<Ingest>,
    /// Enables or disables a member for new events (the router).
    enable: Recipient<SetEnabled>,
    /// Drops the state of streams handed over to another instance (the router).
    release: Recipient<Release>,
    /// Operator resets (the supervisor).
    reset: Recipient<ResetModel>,
    /// Version swaps (the supervisor).
    swap: Recipient<SwapVersion>,
    /// What a new version's executor is started with.
    clock: Arc<dyn Clock>,
    observer: Arc<dyn BatchObserver>,
    pub stats: Arc<PipelineStats>,
    /// The `[aggregator]` settings in force (changeable at run time).
    pub aggregator_config: Arc<RwLock<AggregatorConfig>>,
    /// The `[executor]` settings in force (changeable at run time).
    pub executor_config: Arc<RwLock<ExecutorConfig>>,
    /// The members' gates, in member order (the stacker's is in `stacker`).
    pub gates: Vec<Arc<ModelGate>>,
    pub stacker: Option<Stacker>,
    /// The weights of the `adaptive` method, per timeframe.
    pub adaptive: Arc<crate::adaptive::AdaptiveWeights>,
    /// The outcomes thread's intake of bars (scoring), when outcomes are on.
    bars: Option<crate::outcomes::OutcomesHandle>,
    /// Live quality, when outcomes are on.
    pub quality: Option<Arc<crate::outcomes::Scoreboard>>,
    /// Candidate versions and canaries (`with_experiments`).
    experiments: Option<Addr<crate::experiment::Experiments>>,
}

impl Pipeline {
    /// Starts every executor (members and stacker) and waits until each model is loaded and
    /// warmed (every batch size up to `max_batch`); any failure is returned, all of them listed.
    /// Then wires the actors without loops: the supervisor's address exists before it runs,
    /// so the gates and the router get it at construction, and it gets the router's.
    /// Must run inside an actix system.
    pub async fn start(
        cfg: PipelineConfig,
        members: Vec<ModelSpec>,
        stacker: Option<StackerSpec>,
        publishers: Publishers,
        clock: Arc<dyn Clock>,
        observer: Arc<dyn BatchObserver>,
    ) -> Result<Pipeline, Vec<String>> {
        let mut problems = Vec::new();
        let spawn = |m: &ModelSpec| {
            executor::spawn(
                &m.info.id,
                m.factory.clone(),
                cfg.executor.clone(),
                observer.clone(),
                clock.clone(),
            )
        };
        let models: Vec<&ModelSpec> = members.iter().chain(stacker.as_ref().map(|s| &s.model)).collect();
        let started: Vec<_> = models.iter().map(|m| spawn(m)).collect();
        let mut executors: Vec<ExecutorHandle> = Vec::new();
        for (m, (h, ready)) in models.iter().zip(started) {
            match ready.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(format!("model {}: {e}", m.info.id)),
                Err(_) => problems.push(format!(
                    "model {}: executor thread ended before it was ready",
                    m.info.id
                )),
            }
            executors.push(h);
        }
        if let Some(spec) = &stacker {
            for id in &spec.inputs {
                if !members.iter().any(|m| *m.info.id == **id) {
                    problems.push(format!(
                        "stacking model {} needs member {id:?}, which is not enabled",
                        spec.model.info.id
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let stats = Arc::new(PipelineStats::default());
        let supervisor_ctx = Context::<Supervisor>::new();
        let supervisor = supervisor_ctx.address();
        let gates: Vec<Arc<ModelGate>> = models
            .iter()
            .zip(executors)
            .enumerate()
            .map(|(i, (m, e))| {
                Arc::new(ModelGate::new(
                    i,
                    m.info.clone(),
                    cfg.breaker.clone(),
                    clock.clone(),
                    supervisor.clone().recipient(),
                    e,
                    m.factory.clone(),
                    stats.clone(),
                ))
            })
            .collect();
        let member_gates: Vec<Arc<ModelGate>> = gates[..members.len()].to_vec();
        let stacker_out = stacker.map(|spec| Stacker {
            gate: gates[members.len()].clone(),
            inputs: spec.inputs.iter().map(|s| Arc::from(s.as_str())).collect(),
        });
        let executor_config = Arc::new(RwLock::new(cfg.executor.clone()));
        let aggregator_config = Arc::new(RwLock::new(cfg.aggregator.clone()));
        let router = Router::new(
            cfg.router.clone(),
            member_gates.clone(),
            aggregator_config.clone(),
            cfg.adaptive.clone(),
            stacker_out.clone(),
            publishers,
            supervisor.clone().recipient(),
            stats.clone(),
            clock.clone(),
        )
        .start();
        let supervised = gates
            .iter()
            .map(|g| SupervisedModel { gate: g.clone() })
            .collect();
        supervisor_ctx.run(Supervisor::new(
            supervised,
            executor_config.clone(),
            observer.clone(),
            clock.clone(),
            stats.clone(),
        ));
        Ok(Pipeline {
            router: router.clone().recipient(),
            enable: router.clone().recipient(),
            release: router.recipient(),
            reset: supervisor.clone().recipient(),
            swap: supervisor.recipient(),
            clock,
            observer,
            stats,
            aggregator_config,
            executor_config,
            gates: member_gates,
            stacker: stacker_out,
            adaptive: cfg.adaptive.clone(),
            bars: None,
            quality: None,
            experiments: None,
        })
    }

    /// Starts the experiments actor (after `with_outcomes`, whose quality the canaries weigh):
    /// shadow outputs go to `shadow`, decisions to `decisions` besides the log and the counters;
    /// canary intervals run on `clock` (a test drives them with a manual one). Called again,
    /// it replaces the actor (and ends its experiments' checks).
    pub fn with_experiments(
        mut self,
        shadow: Arc<dyn crate::experiment::ShadowSink>,
        decisions: Vec<Arc<dyn crate::experiment::DecisionSink>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let quality = self
            .quality
            .clone()
            .map(|q| q as Arc<dyn crate::experiment::QualitySource>);
        self.experiments = Some(
            crate::experiment::Experiments::new(self.gates.clone(), clock, quality, shadow, decisions)
                .start(),
        );
        self
    }

    fn experiments_actor(&self) -> Result<&Addr<crate::experiment::Experiments>, String> {
        self.experiments
            .as_ref()
            .ok_or_else(|| "experiments are not running in this pipeline".to_string())
    }

    /// Loads `version` of member `id` on an executor of its own, warms it, then installs it as
    /// the candidate of an experiment (`spec`); the version serving goes on serving. Answered
    /// with the version serving.
    pub async fn start_experiment(
        &self,
        id: &str,
        version: Arc<str>,
        factory: BackendFactory,
        spec: crate::experiment::ExperimentSpec,
    ) -> Result<Arc<str>, String> {
        let exp = self.experiments_actor()?.clone();
        if !self.gates.iter().any(|g| *g.info.id == *id) {
            return Err(format!("unknown member {id:?} (experiments are per member)"));
        }
        let executor = self.load_executor(id, &version, factory.clone()).await?;
        exp.send(crate::experiment::StartExperiment {
            model: id.to_string(),
            version,
            executor,
            factory,
            spec,
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Ends member `id`'s experiment: promotes its candidate, or takes it out.
    pub async fn end_experiment(&self, id: &str, promote: bool) -> Result<(), String> {
        self.experiments_actor()?
            .send(crate::experiment::EndExperiment {
                model: id.to_string(),
                promote,
            })
            .await
            .map_err(|e| e.to_string())?
    }

    /// Every running experiment, and the recent decisions.
    pub async fn experiments(
        &self,
    ) -> Result<
        (
            Vec<crate::experiment::ExperimentView>,
            Vec<crate::experiment::DecisionEvent>,
        ),
        String,
    > {
        self.experiments_actor()?
            .send(crate::experiment::ListExperiments)
            .await
            .map_err(|e| e.to_string())
    }

    /// Queues the bars of every vector ingested from now on into `bars` (the outcomes
    /// thread, which must also be one of the direct publishers to see the predictions) and
    /// shows its `quality`.
    pub fn with_outcomes(
        mut self,
        bars: crate::outcomes::OutcomesHandle,
        quality: Arc<crate::outcomes::Scoreboard>,
    ) -> Self {
        self.bars = Some(bars);
        self.quality = Some(quality);
        self
    }

    /// Hands validated vectors to the router; waits while its mailbox is full.
    pub async fn ingest(&self, vectors: Vec<Vector>) -> Result<(), MailboxError> {
        if let Some(b) = &self.bars {
            let bars: Vec<_> = vectors
                .iter()
                .map(|v| crate::outcomes::Bar {
                    key: v.key.clone(),
                    sequence: v.sequence,
                    close: v.close,
                    values: v.values.clone(),
                    refill: v.refill,
                })
                .collect();
            // Before the router: a bar is queued before any prediction made from it.
            b.bars(bars);
        }
        self.router.send(Ingest(vectors)).await
    }

    /// At shutdown, after the drain: waits until the outcomes thread has scored what was
    /// queued and its sinks have flushed the events (each sink bounds its wait).
    pub async fn flush_outcomes(&self) {
        if let Some(b) = &self.bars {
            b.flush().await;
        }
    }

    /// Waits until the outcomes thread has handled everything queued before (the
    /// predictions of every drained event among them).
    pub async fn settle_outcomes(&self) -> Result<(), MailboxError> {
        match &self.bars {
            Some(b) => b.settle().await.map_err(|_| MailboxError::Closed),
            None => Ok(()),
        }
    }

    /// Drops the state of `streams` (their input moved to another instance) once what was
    /// routed before has finished; their windows are rebuilt if they come back.
    pub fn release(&self, streams: Vec<crate::types::StreamKey>) {
        if !streams.is_empty() {
            self.release.do_send(Release(streams));
        }
    }

    /// Waits until every started event has been finalised, or the timeout passes. Woken by
    /// each finished event, not by polling.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let wait = async {
            // An ingest in the router's mailbox has not started its events yet: ask the router
            // for a round trip first so that everything before this call is counted.
            let _ = self.router.send(Ingest(Vec::new())).await;
            loop {
                let finished = self.stats.event_finished();
                if self.stats.idle() {
                    return;
                }
                finished.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    pub fn model_index(&self, id: &str) -> Option<usize> {
        self.gates.iter().position(|g| *g.info.id == *id)
    }

    pub async fn reset_model(&self, id: &str) -> Result<(), String> {
        self.reset
            .send(ResetModel(id.to_string()))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Starts `version` of member or stacker `id` from `factory` on an executor of its own,
    /// waits until it is loaded and warmed (every batch size), then swaps it into the gate:
    /// calls from the next one on go to it, the old executor answers what it was given and
    /// stops. Windows are the streams' and stay. Until the swap, and when loading fails, the
    /// version serving keeps serving. Returns the version replaced.
    pub async fn swap_version(
        &self,
        id: &str,
        version: Arc<str>,
        factory: crate::executor::BackendFactory,
    ) -> Result<Arc<str>, String> {
        if !self.all_gates().any(|g| *g.info.id == *id) {
            return Err(format!("unknown model {id:?}"));
        }
        let handle = self.load_executor(id, &version, factory.clone()).await?;
        self.swap
            .send(SwapVersion {
                model: id.to_string(),
                version,
                executor: handle,
                factory,
            })
            .await
            .map_err(|e| e.to_string())?
    }

    /// Swaps idle `version` of model `id` in (loaded and warmed before: see
    /// [`ModelGate::keep_idle`]), between two events; `Ok(None)` when it is not idle.
    pub async fn swap_to_idle(&self, id: &str, version: &str) -> Result<Option<Arc<str>>, String> {
        let g = self
            .all_gates()
            .find(|g| *g.info.id == *id)
            .ok_or_else(|| format!("unknown model {id:?}"))?;
        let Some(idle) = g.take_idle(version) else {
            return Ok(None);
        };
        self.swap
            .send(SwapVersion {
                model: id.to_string(),
                version: Arc::from(version),
                executor: idle.executor,
                factory: idle.factory,
            })
            .await
            .map_err(|e| e.to_string())?
            .map(Some)
    }

    /// Loads and warms `version` of model `id` and keeps it idle, ready for a swap (the
    /// version policy); answers the idle versions freed to stay within the cap.
    pub async fn load_idle(
        &self,
        id: &str,
        version: Arc<str>,
        factory: crate::executor::BackendFactory,
    ) -> Result<Vec<Arc<str>>, String> {
        let g = self
            .all_gates()
            .find(|g| *g.info.id == *id)
            .ok_or_else(|| format!("unknown model {id:?}"))?
            .clone();
        let handle = self.load_executor(id, &version, factory.clone()).await?;
        Ok(g.keep_idle(version, handle, factory))
    }

    /// The cap on loaded versions of every member (`service.max_loaded_versions`).
    pub fn set_max_loaded(&self, max: usize) {
        for g in self.all_gates() {
            g.set_max_loaded(max);
        }
    }

    /// An executor of its own for `version` of model `id`, loaded and warmed (every batch
    /// size); one that fails or hangs is reported and given up.
    async fn load_executor(
        &self,
        id: &str,
        version: &str,
        factory: BackendFactory,
    ) -> Result<ExecutorHandle, String> {
        let config = self
            .executor_config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let (handle, ready) = executor::spawn(id, factory, config, self.observer.clone(), self.clock.clone());
        // Loading and warming every batch size takes seconds; one that hangs is given up (its
        // handle dropped, so its thread ends once it gets past the hang).
        match tokio::time::timeout(Duration::from_secs(120), ready).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(format!("{id} version {version}: {e}")),
            Ok(Err(_)) => {
                return Err(format!(
                    "{id} version {version}: its executor ended before it was ready"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "{id} version {version}: not loaded and warmed within 120 s"
                ));
            }
        }
        Ok(handle)
    }

    pub fn set_enabled(&self, id: &str, enabled: bool) -> Result<(), String> {
        let i = self
            .model_index(id)
            .ok_or_else(|| format!("unknown model {id:?}"))?;
        self.enable.do_send(SetEnabled { model: i, enabled });
        Ok(())
    }

    /// The gates of every model: the members, then the stacker.
    pub fn all_gates(&self) -> impl Iterator<Item = &Arc<ModelGate>> {
        self.gates.iter().chain(self.stacker.as_ref().map(|s| &s.gate))
    }

    /// Applies new batching limits to every executor (from the next batch), and to the ones
    /// the supervisor starts later.
    pub fn set_executor_config(&self, b: ExecutorConfig) {
        if let Ok(mut g) = self.executor_config.write() {
            *g = b.clone();
        }
        for g in self.all_gates() {
            g.executor().set_config(b.clone());
            if let Some(c) = g.candidate() {
                c.executor.set_config(b.clone());
            }
            // Idle versions too: a swap back must not undo a change made since they loaded.
            for e in g.idle_executors() {
                e.set_config(b.clone());
            }
        }
    }

    pub fn set_breaker(&self, b: BreakerConfig) {
        for g in self.all_gates() {
            g.set_breaker_config(b.clone());
        }
    }

    /// The current executor of every model (members, then the stacker).
    pub fn executors(&self) -> Vec<ExecutorHandle> {
        self.all_gates().map(|g| g.executor()).collect()
    }

    pub fn active_streams(&self) -> u64 {
        self.stats.active_streams.load(Ordering::Relaxed)
    }
}

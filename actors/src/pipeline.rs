//! Builds and runs the actor graph: executors (loaded and warmed), gates, supervisor, router.
//! Everything a bus adapter or the HTTP layer needs is on [`Pipeline`].
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::aggregator::{EnsembleSettings, Stacker};
use crate::breaker::BreakerConfig;
use crate::clock::Clock;
use crate::executor::{self, BackendFactory, BatchConfig, BatchObserver, ExecutorHandle};
use crate::gate::ModelGate;
use crate::messages::{Ingest, Publish, ResetModel, SetEnabled};
use crate::router::{Router, RouterConfig};
use crate::supervisor::{GetExecutors, SetRouter, SupervisedModel, Supervisor};
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
    pub batch: BatchConfig,
    pub breaker: BreakerConfig,
    pub ensemble: EnsembleSettings,
}

#[derive(Clone)]
pub struct Pipeline {
    pub router: Addr<Router>,
    pub supervisor: Addr<Supervisor>,
    pub stats: Arc<PipelineStats>,
    pub settings: Arc<RwLock<EnsembleSettings>>,
    pub batch: Arc<RwLock<BatchConfig>>,
    pub gates: Vec<Arc<ModelGate>>,
    pub stacker: Option<Stacker>,
}

impl Pipeline {
    /// Starts every executor and waits until each model is loaded and warmed (every batch size
    /// up to `max_batch`); any failure is returned, all of them listed. Must run inside an actix
    /// system.
    pub async fn start(
        cfg: PipelineConfig,
        members: Vec<ModelSpec>,
        stacker: Option<StackerSpec>,
        publishers: Vec<Recipient<Publish>>,
        clock: Arc<dyn Clock>,
        observer: Arc<dyn BatchObserver>,
    ) -> Result<Pipeline, Vec<String>> {
        let mut problems = Vec::new();
        let mut handles = Vec::new();
        for m in &members {
            let (h, ready) =
                executor::spawn(&m.info.id, m.factory.clone(), cfg.batch.clone(), observer.clone());
            handles.push((h, ready));
        }
        let stacker_exec = stacker.as_ref().map(|s| {
            executor::spawn(
                &s.model.info.id,
                s.model.factory.clone(),
                cfg.batch.clone(),
                observer.clone(),
            )
        });
        let mut executors: Vec<ExecutorHandle> = Vec::new();
        for (m, (h, ready)) in members.iter().zip(handles) {
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
        let mut stacker_out = None;
        if let (Some(spec), Some((h, ready))) = (stacker, stacker_exec) {
            match ready.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(format!("model {}: {e}", spec.model.info.id)),
                Err(_) => problems.push(format!(
                    "model {}: executor ended before it was ready",
                    spec.model.info.id
                )),
            }
            let mut inputs = Vec::new();
            for id in &spec.inputs {
                match members.iter().position(|m| *m.info.id == **id) {
                    Some(i) => inputs.push(i),
                    None => problems.push(format!(
                        "stacking model {} needs member {id:?}, which is not enabled",
                        spec.model.info.id
                    )),
                }
            }
            stacker_out = Some(Stacker {
                executor: h,
                info: spec.model.info,
                inputs,
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let gates: Vec<Arc<ModelGate>> = members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Arc::new(ModelGate::new(
                    i,
                    m.info.clone(),
                    cfg.breaker.clone(),
                    clock.clone(),
                ))
            })
            .collect();
        let batch = Arc::new(RwLock::new(cfg.batch.clone()));
        let supervised = members
            .into_iter()
            .zip(&gates)
            .zip(&executors)
            .map(|((m, g), e)| SupervisedModel {
                gate: g.clone(),
                factory: m.factory,
                executor: e.clone(),
            })
            .collect();
        let supervisor = Supervisor::new(supervised, batch.clone(), observer).start();
        for g in &gates {
            g.set_supervisor(supervisor.clone().recipient());
        }
        let settings = Arc::new(RwLock::new(cfg.ensemble.clone()));
        let stats = Arc::new(PipelineStats::default());
        let router = Router::new(
            cfg.router.clone(),
            gates.clone(),
            executors,
            settings.clone(),
            stacker_out.clone(),
            publishers.into(),
            supervisor.clone().recipient(),
            stats.clone(),
        )
        .start();
        supervisor.do_send(SetRouter(router.clone()));
        Ok(Pipeline {
            router,
            supervisor,
            stats,
            settings,
            batch,
            gates,
            stacker: stacker_out,
        })
    }

    /// Hands validated vectors to the router; waits while its mailbox is full.
    pub async fn ingest(&self, vectors: Vec<Vector>) -> Result<(), MailboxError> {
        self.router.send(Ingest(vectors)).await
    }

    /// Waits until every started event has been finalised, or the timeout passes.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            // An ingest in the router's mailbox has not started its events yet: ask the router
            // for a round trip first so that everything before this call is counted.
            let _ = self.router.send(Ingest(Vec::new())).await;
            if self.stats.idle() {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn model_index(&self, id: &str) -> Option<usize> {
        self.gates.iter().position(|g| *g.info.id == *id)
    }

    pub async fn reset_model(&self, id: &str) -> Result<(), String> {
        self.supervisor
            .send(ResetModel(id.to_string()))
            .await
            .map_err(|e| e.to_string())?
    }

    pub fn set_enabled(&self, id: &str, enabled: bool) -> Result<(), String> {
        let i = self
            .model_index(id)
            .ok_or_else(|| format!("unknown model {id:?}"))?;
        self.router.do_send(SetEnabled { model: i, enabled });
        Ok(())
    }

    /// Applies new batching limits to every executor (from the next batch).
    pub async fn set_batch(&self, b: BatchConfig) {
        if let Ok(mut g) = self.batch.write() {
            *g = b.clone();
        }
        if let Ok(execs) = self.supervisor.send(GetExecutors).await {
            for e in execs {
                e.set_batch(b.clone());
            }
        }
        if let Some(s) = &self.stacker {
            s.executor.set_batch(b);
        }
    }

    pub fn set_breaker(&self, b: BreakerConfig) {
        for g in &self.gates {
            g.set_breaker_config(b.clone());
        }
    }

    /// Every model loaded, warmed and not down.
    pub async fn executors(&self) -> Vec<ExecutorHandle> {
        self.supervisor.send(GetExecutors).await.unwrap_or_default()
    }

    pub fn active_streams(&self) -> u64 {
        self.stats.active_streams.load(Ordering::Relaxed)
    }
}

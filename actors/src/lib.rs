//! # augur-actors
//!
//! The actor graph of Augur on actix, independent of any model framework and any bus crate:
//! models are reached through [`executor::InferenceBackend`], buses through
//! `Recipient<Publish>` sinks and [`pipeline::Pipeline::ingest`]. The model runtime
//! (`augur-runtime`) supplies the first, the service's transports the second.
//!
//! ```text
//! ingest ─> Router ─> ModelActor per (symbol, timeframe, model) ─> Executor thread per model
//!             │                         │ (window, admission by the model's gate)
//!             └─> Aggregator per (symbol, timeframe) <─┘ ─> Publish sinks
//! Supervisor: circuit transitions from the gates, restarts with backoff, parks faulted models
//!             (the members and the stacker alike)
//! ```
//!
//! - [`types`]: checked domain types (no protobuf past the codec).
//! - [`messages`]: every message of the graph.
//! - [`router`], [`model_actor`], [`aggregator`], [`supervisor`]: the actors.
//! - [`executor`]: the batching inference threads.
//! - [`breaker`], [`gate`]: the circuit breaker (pure, time injected) and its shared wrapper,
//!   which also holds the model's current executor.
//! - [`experiment`]: candidate versions beside the serving one (A/B split, shadow, canary with
//!   its judge and automatic promotion or rollback).
//! - [`clock`]: injected time (deadlines, backoff, batching, breakers); a manual clock for tests.
//! - [`pipeline`]: builds the graph. [`telemetry`]: every metric name. [`events`]: typed
//!   telemetry events, each counting, recording its metric and logging in one place.
#![forbid(unsafe_code)]
pub mod adaptive;
pub mod aggregator;
pub mod breaker;
pub mod clock;
pub mod drift;
pub mod events;
pub mod executor;
pub mod experiment;
pub mod forecast;
pub mod gate;
pub mod messages;
pub mod model_actor;
pub mod outcomes;
pub mod patterns;
pub mod pipeline;
pub mod router;
pub mod supervisor;
pub mod telemetry;
pub mod types;

//! # augur-tools
//!
//! What runs beside the service, never inside it:
//! - [`features`]: ta-v1 in Rust (the feed's feature engine), pinned to the Python trainer.
//! - [`feed`]: `augur feed`, real OHLCV -> ta-v1 -> NATS and/or Kafka at a rate.
//! - [`publish`]: `augur publish`, replays the committed real series onto NATS.
//! - [`ohlcv`], [`signals`], [`charts`]: `augur replay`'s quality report: OHLCV files (CSV,
//!   Parquet) in, scored signals (CSV, Parquet) and reliability / rolling-accuracy PNGs out.
//! - [`bench`]: `augur bench`, the benchmark harness (floor, scenarios S1-S4, the Python
//!   baseline peer).
#![forbid(unsafe_code)]
pub mod bench;
pub mod charts;
pub mod features;
pub mod feed;
pub mod ohlcv;
pub mod publish;
pub mod signals;

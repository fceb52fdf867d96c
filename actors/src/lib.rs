//! # augur-actors
//!
//! The actor graph of Augur, independent of any framework or bus crate: inference, buses and
//! HTTP are reached through traits and `Recipient`s that the `augur` crate implements.
pub mod breaker;

//! In-process sinks for predictions: a collector (replay, tests) and a JSON-lines writer.
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use augur_actors::messages::{Barrier, Publish};
use augur_actors::types::Ensemble;

/// Keeps every prediction in memory.
#[derive(Default, Clone)]
pub struct Collector(pub Arc<Mutex<Vec<Arc<Ensemble>>>>);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<Publish> for Collector {
    type Result = ();

    fn handle(&mut self, Publish(e): Publish, _: &mut Context<Self>) {
        if let Ok(mut g) = self.0.lock() {
            g.push(e);
        }
    }
}

impl Handler<Barrier> for Collector {
    type Result = ();

    fn handle(&mut self, _: Barrier, _: &mut Context<Self>) {}
}

impl Collector {
    /// Predictions sorted by (symbol, timeframe, sequence): a deterministic order.
    pub fn sorted(&self) -> Vec<Arc<Ensemble>> {
        let mut v = self.0.lock().map(|g| g.clone()).unwrap_or_default();
        v.sort_by(|a, b| (&a.symbol, &a.timeframe, a.sequence).cmp(&(&b.symbol, &b.timeframe, b.sequence)));
        v
    }
}

//! A small publisher of the committed real series over NATS (the stand-in for the upstream
//! feature service until `augur feed` computes features itself): streams are interleaved
//! round-robin, every vector is re-stamped (event time and `published_at_ns` = now) and
//! sequences keep increasing across loops.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use augur_actors::clock::unix_ns;
use prost::Message;

use crate::codec::read_length_delimited;
use crate::pb;

#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub url: String,
    pub prefix: String,
    /// Vectors per second (0: as fast as possible).
    pub rate: f64,
    /// Stop after this many vectors (0: one pass, or forever with `repeat`).
    pub count: u64,
    pub repeat: bool,
}

/// Every vector of the file, interleaved across its streams.
pub fn interleave(file: &[u8]) -> anyhow::Result<Vec<pb::FeatureVector>> {
    let mut streams: BTreeMap<(String, String), Vec<pb::FeatureVector>> = BTreeMap::new();
    for payload in read_length_delimited(file).map_err(anyhow::Error::msg)? {
        for v in pb::FeatureVectorBatch::decode(payload)
            .context("decoding the input file")?
            .vectors
        {
            streams
                .entry((v.symbol.clone(), v.timeframe.clone()))
                .or_default()
                .push(v);
        }
    }
    let longest = streams.values().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..longest {
        for s in streams.values() {
            if let Some(v) = s.get(i) {
                out.push(v.clone());
            }
        }
    }
    Ok(out)
}

pub async fn run(
    file: &[u8],
    o: &PublishOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let vectors = interleave(file)?;
    anyhow::ensure!(!vectors.is_empty(), "the input file holds no vectors");
    let client = async_nats::connect(o.url.as_str())
        .await
        .context("connecting to NATS")?;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut pass = 0u64;
    'outer: loop {
        for v in &vectors {
            if o.count > 0 && sent >= o.count {
                break 'outer;
            }
            if *stop.borrow() {
                break 'outer;
            }
            if o.rate > 0.0 {
                let due = started + Duration::from_secs_f64(sent as f64 / o.rate);
                let now = Instant::now();
                if due > now {
                    tokio::select! {
                        _ = tokio::time::sleep(due - now) => {}
                        _ = stop.changed() => break 'outer,
                    }
                }
            }
            let mut v = v.clone();
            // Later passes continue each stream's sequence.
            v.sequence += pass * 1_000_000;
            let now_ns = unix_ns();
            v.event_time_ms = now_ns / 1_000_000;
            v.published_at_ns = now_ns;
            let subject = format!(
                "{}.{}.{}",
                o.prefix,
                v.timeframe,
                crate::bus::nats::subject_token(&v.symbol)
            );
            let payload = pb::FeatureVectorBatch { vectors: vec![v] }.encode_to_vec();
            client
                .publish(subject, payload.into())
                .await
                .context("publishing")?;
            sent += 1;
        }
        pass += 1;
        if !o.repeat && o.count == 0 {
            break;
        }
    }
    client.flush().await.context("flushing")?;
    Ok(sent)
}

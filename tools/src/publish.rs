//! `augur publish`: replays a recorded file of feature vectors (by default the committed real
//! series) over NATS through the feed's sender: streams interleaved round robin, every vector
//! re-stamped (event time and `published_at_ns` = now), sequences rising across passes.
use std::collections::BTreeMap;

use anyhow::Context as _;
use prost::Message;

use crate::feed::{Feed, FeedOptions, Pace};
use augur_service::codec::read_length_delimited;
use augur_service::pb;

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

/// The file's vectors grouped by stream, streams in (symbol, timeframe) order.
pub fn by_stream(file: &[u8]) -> anyhow::Result<Vec<Vec<pb::FeatureVector>>> {
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
    Ok(streams.into_values().collect())
}

/// Every vector of the file, interleaved across its streams (the order a feed sends them).
pub fn interleave(file: &[u8]) -> anyhow::Result<Vec<pb::FeatureVector>> {
    let streams = by_stream(file)?;
    let longest = streams.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..longest {
        for s in &streams {
            if let Some(v) = s.get(i) {
                out.push(v.clone());
            }
        }
    }
    Ok(out)
}

/// Publishes the file's streams round robin through a [`Feed`] (re-stamped, sequences rising
/// across passes): one pass, `count` vectors, or forever with `repeat`.
pub async fn run(
    file: &[u8],
    o: &PublishOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let streams = by_stream(file)?;
    let total: u64 = streams.iter().map(|s| s.len() as u64).sum();
    anyhow::ensure!(total > 0, "the input file holds no vectors");
    let fo = FeedOptions {
        nats_url: Some(o.url.clone()),
        nats_prefix: o.prefix.clone(),
        kafka_brokers: None,
        kafka_topic: String::new(),
        symbols: 0,
        timeframes: Vec::new(),
        rate: o.rate,
        count: o.count,
        duration: None,
    };
    let mut feed = Feed::connect(streams, &fo).await?;
    let count = if o.count == 0 && !o.repeat { total } else { o.count };
    feed.send(
        &Pace {
            rate: o.rate,
            count,
            duration: None,
            progress: false,
        },
        &mut stop,
    )
    .await
}

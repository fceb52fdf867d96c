//! `augur feed`: the stand-in for the upstream feature service. Reads the committed real OHLCV
//! series, computes ta-v1 in Rust ([`crate::features`], bit-equal to the trainer), and
//! publishes `FeatureVectorBatch` messages for N symbols x timeframes (each stream replays one
//! of the real series, round robin), interleaved across streams, at a given rate, stamping
//! event time and `published_at_ns` at publish. NATS and/or Kafka.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use augur_actors::clock::unix_ns;
use prost::Message as _;

use crate::features::TaV1;
use augur_service::pb;

/// One real series: name, native timeframe, OHLCV rows oldest first.
pub struct Series {
    pub symbol: String,
    pub timeframe: String,
    pub rows: Vec<[f64; 5]>,
}

/// The committed real series (models/data), in a fixed order.
pub fn load_series(data: &Path) -> anyhow::Result<Vec<Series>> {
    let gz = std::fs::read(data.join("stocks.csv.gz")).context("reading stocks.csv.gz")?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .context("gunzip stocks.csv.gz")?;
    let mut by: BTreeMap<String, Vec<(String, [f64; 5])>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        anyhow::ensure!(f.len() >= 7, "stocks.csv.gz line {}: {} fields", i + 1, f.len());
        let mut r = [0.0; 5];
        for (j, x) in r.iter_mut().enumerate() {
            *x = f[2 + j]
                .parse()
                .with_context(|| format!("stocks.csv.gz line {}", i + 1))?;
        }
        by.entry(f[0].to_string())
            .or_default()
            .push((f[1].to_string(), r));
    }
    let mut out: Vec<Series> = by
        .into_iter()
        .map(|(symbol, mut rows)| {
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            Series {
                symbol,
                timeframe: "1d".into(),
                rows: rows.into_iter().map(|r| r.1).collect(),
            }
        })
        .collect();
    let fx =
        std::fs::read_to_string(data.join("FOREX_EURUSD_1H_ASK.csv")).context("reading the EURUSD csv")?;
    let mut rows = Vec::new();
    for (i, line) in fx.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        anyhow::ensure!(f.len() >= 6, "EURUSD csv line {}: {} fields", i + 1, f.len());
        let mut r = [0.0; 5];
        for (j, x) in r.iter_mut().enumerate() {
            *x = f[1 + j]
                .parse()
                .with_context(|| format!("EURUSD csv line {}", i + 1))?;
        }
        rows.push(r);
    }
    out.push(Series {
        symbol: "EURUSD".into(),
        timeframe: "1h".into(),
        rows,
    });
    Ok(out)
}

/// The ta-v1 vectors of one series (sequence = 1-based bar index), from the first warm bar.
pub fn vectors(s: &Series, symbol: &str, timeframe: &str) -> Vec<pb::FeatureVector> {
    let mut st = TaV1::default();
    let mut out = Vec::new();
    for (i, r) in s.rows.iter().enumerate() {
        if let Some(f) = st.update(r[0], r[1], r[2], r[3], r[4]) {
            let seq = i as u64 + 1;
            out.push(pb::FeatureVector {
                symbol: symbol.to_string(),
                timeframe: timeframe.to_string(),
                event_time_ms: 0,
                sequence: seq,
                feature_set: "ta-v1".into(),
                values: f.to_vec(),
                bar: Some(pb::Bar {
                    open: r[0],
                    high: r[1],
                    low: r[2],
                    close: r[3],
                    volume: r[4],
                }),
                exchange: if s.timeframe == "1h" {
                    "FX".into()
                } else {
                    "US".into()
                },
                correlation_id: format!("{symbol}-{timeframe}-{seq}"),
                published_at_ns: 0,
            });
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct FeedOptions {
    pub nats_url: Option<String>,
    pub nats_prefix: String,
    pub kafka_brokers: Option<String>,
    pub kafka_topic: String,
    /// Symbols per timeframe; stream k replays real series k mod 6 as symbol `<REAL>_<k>`.
    pub symbols: usize,
    pub timeframes: Vec<String>,
    /// Vectors per second over all streams (0: as fast as possible).
    pub rate: f64,
    /// Stop after this many vectors (0: no limit).
    pub count: u64,
    /// Stop after this long (None: no limit).
    pub duration: Option<Duration>,
}

/// The streams of a feed: `symbols` per timeframe, stream k of a timeframe replaying real
/// series k mod 6 under the symbol `<REAL>_<k>`.
pub fn streams(
    data: &Path,
    symbols: usize,
    timeframes: &[String],
) -> anyhow::Result<Vec<Vec<pb::FeatureVector>>> {
    let series = load_series(data)?;
    let mut out = Vec::new();
    for tf in timeframes {
        for k in 0..symbols {
            let s = &series[k % series.len()];
            out.push(vectors(s, &format!("{}_{k}", s.symbol), tf));
        }
    }
    Ok(out)
}

/// How one [`Feed::send`] call stops.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    /// Vectors per second over all streams (0: as fast as possible).
    pub rate: f64,
    /// Stop after this many vectors (0: no limit).
    pub count: u64,
    /// Stop after this long (None: no limit).
    pub duration: Option<Duration>,
    /// Print a progress line each second.
    pub progress: bool,
}

/// A connected feed that publishes its streams round robin (one vector of every stream, then
/// the next), re-stamped at publish. Each [`Feed::send`] goes on where the last one stopped,
/// so sequences keep increasing (a later pass over the data adds 1,000,000 per pass).
pub struct Feed {
    streams: Vec<Vec<pb::FeatureVector>>,
    longest: usize,
    /// Cursor: round, then stream within the round.
    round: usize,
    stream: usize,
    pass: u64,
    nats: Option<(async_nats::Client, String)>,
    kafka: Option<(rdkafka::producer::FutureProducer, String)>,
}

impl Feed {
    pub async fn connect(streams: Vec<Vec<pb::FeatureVector>>, o: &FeedOptions) -> anyhow::Result<Feed> {
        anyhow::ensure!(
            o.nats_url.is_some() || o.kafka_brokers.is_some(),
            "feed: give --nats and/or --kafka"
        );
        let longest = streams.iter().map(Vec::len).max().unwrap_or(0);
        anyhow::ensure!(longest > 0, "feed: no vectors to send");
        let nats = match &o.nats_url {
            Some(u) => Some((
                async_nats::connect(u.as_str())
                    .await
                    .context("connecting to NATS")?,
                o.nats_prefix.clone(),
            )),
            None => None,
        };
        let kafka = match &o.kafka_brokers {
            Some(b) => Some((
                rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", b)
                    .set("linger.ms", "1")
                    // A stream's vectors stay in order through retries (Augur drops a vector
                    // older than its stream's last): with several requests in flight and no
                    // idempotence, a retried batch lands after a later one.
                    .set("max.in.flight.requests.per.connection", "1")
                    .create()
                    .context("kafka producer")?,
                o.kafka_topic.clone(),
            )),
            None => None,
        };
        Ok(Feed {
            streams,
            longest,
            round: 0,
            stream: 0,
            pass: 0,
            nats,
            kafka,
        })
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The next vector in round-robin order, re-stamped now.
    fn next_vector(&mut self) -> pb::FeatureVector {
        loop {
            let found = self.streams[self.stream].get(self.round).cloned();
            // The pass this vector belongs to, before the cursor moves past the pass's end.
            let pass = self.pass;
            self.stream += 1;
            if self.stream == self.streams.len() {
                self.stream = 0;
                self.round += 1;
                if self.round == self.longest {
                    self.round = 0;
                    self.pass += 1;
                }
            }
            if let Some(mut v) = found {
                v.sequence += pass * 1_000_000;
                let now = unix_ns();
                v.event_time_ms = now / 1_000_000;
                v.published_at_ns = now;
                return v;
            }
        }
    }

    /// Publishes until the count, the duration or `stop`; returns the vectors sent.
    pub async fn send(
        &mut self,
        p: &Pace,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<u64> {
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut sent = 0u64;
        loop {
            if (p.count > 0 && sent >= p.count)
                || p.duration.is_some_and(|d| started.elapsed() >= d)
                || *stop.borrow()
            {
                break;
            }
            if p.rate > 0.0 {
                let due = started + Duration::from_secs_f64(sent as f64 / p.rate);
                let now = Instant::now();
                if due > now {
                    tokio::select! {
                        _ = tokio::time::sleep(due - now) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
            let v = self.next_vector();
            let symbol = v.symbol.clone();
            let subject = self.nats.as_ref().map(|(_, prefix)| {
                format!(
                    "{prefix}.{}.{}",
                    v.timeframe,
                    augur_service::bus::nats::subject_token(&symbol)
                )
            });
            let payload: bytes::Bytes = pb::FeatureVectorBatch { vectors: vec![v] }.encode_to_vec().into();
            if let (Some((c, _)), Some(subject)) = (&self.nats, subject) {
                c.publish(subject, payload.clone())
                    .await
                    .context("nats publish")?;
            }
            if let Some((p, topic)) = &self.kafka {
                let rec = rdkafka::producer::FutureRecord::to(topic)
                    .key(&symbol)
                    .payload(&payload[..]);
                p.send(rec, rdkafka::util::Timeout::After(Duration::from_secs(30)))
                    .await
                    .map_err(|(e, _)| e)
                    .context("kafka produce")?;
            }
            sent += 1;
            if p.progress && last_report.elapsed() >= Duration::from_secs(1) {
                eprintln!(
                    "feed: {sent} vectors, {:.0}/s, {} streams",
                    sent as f64 / started.elapsed().as_secs_f64(),
                    self.streams.len()
                );
                last_report = Instant::now();
            }
        }
        if let Some((c, _)) = &self.nats {
            c.flush().await.context("nats flush")?;
        }
        Ok(sent)
    }
}

/// `augur feed`: publishes until the count, the duration or `stop`; returns the vectors sent.
pub async fn run(
    data: &Path,
    o: &FeedOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let mut feed = Feed::connect(streams(data, o.symbols, &o.timeframes)?, o).await?;
    feed.send(
        &Pace {
            rate: o.rate,
            count: o.count,
            duration: o.duration,
            progress: true,
        },
        &mut stop,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(symbol: &str, n: u64) -> Vec<pb::FeatureVector> {
        (1..=n)
            .map(|sequence| pb::FeatureVector {
                symbol: symbol.into(),
                timeframe: "1m".into(),
                sequence,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn test_a_pass_keeps_every_sequence_and_the_next_pass_rises_above_it() {
        let mut feed = Feed {
            // The last stream is the longest: its last vector ends the pass.
            streams: vec![stream("A", 2), stream("B", 3)],
            longest: 3,
            round: 0,
            stream: 0,
            pass: 0,
            nats: None,
            kafka: None,
        };
        let got: Vec<(String, u64)> = (0..7)
            .map(|_| {
                let v = feed.next_vector();
                (v.symbol, v.sequence)
            })
            .collect();
        let want: Vec<(String, u64)> = [
            ("A", 1),
            ("B", 1),
            ("A", 2),
            ("B", 2),
            ("B", 3),
            ("A", 1_000_001),
            ("B", 1_000_001),
        ]
        .iter()
        .map(|(s, q)| (s.to_string(), *q))
        .collect();
        assert_eq!(got, want, "the last vector of a pass keeps its sequence");
    }
}

//! The benchmark's consumer: a NATS subscriber on the prediction subjects, on its own thread
//! (like a separate trading-engine process would be), stamping each prediction on arrival.
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context as _;
use augur_actors::clock::unix_ns;
use futures::StreamExt;
use hdrhistogram::Histogram;
use prost::Message as _;
use serde::Serialize;

use augur_service::pb;

/// One prediction as the receiver saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The feature's `published_at_ns` (copied by the service): which phase it belongs to.
    feature_ns: i64,
    latency_ns: i64,
    models_used: u32,
    /// When the prediction left the peer (its `published_at_ns`).
    exit_ns: i64,
    /// The slowest member's forward pass (the batch it ran in), µs.
    inference_us: u32,
    /// Hash of (symbol, timeframe, sequence), to tell duplicates.
    key: u64,
}

pub struct Receiver {
    seen: Arc<Mutex<Vec<Seen>>>,
    decode_errors: Arc<Mutex<u64>>,
    _thread: SubscriberThread,
}

/// What arrived for the features published in a time window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub received: u64,
    pub unique: u64,
    /// Predictions with fewer members than expected (a member missed the deadline or failed).
    pub incomplete: u64,
    pub latency: Latency,
    /// Where the time went, medians in ms: feature published -> prediction left the peer
    /// (inbound hop + everything inside), of which the slowest member's forward pass; and
    /// prediction left the peer -> received (outbound hop).
    pub breakdown: Breakdown,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Breakdown {
    pub to_exit_p50_ms: f64,
    pub to_exit_p99_ms: f64,
    pub forward_p50_ms: f64,
    pub forward_p99_ms: f64,
    pub exit_to_receiver_p50_ms: f64,
    pub exit_to_receiver_p99_ms: f64,
}

/// End-to-end latency in milliseconds: feature published by the feed to prediction received.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// The distribution: `[upper_ms, count]` per bucket, bounds 10 µs × 1.2^k, the empty
    /// buckets at either end left out (kept for S1, for the picture).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub histogram: Vec<(f64, u64)>,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1e6,
            histogram: log_buckets(h),
        }
    }
}

/// `[upper_ms, count]` buckets of a nanosecond histogram, upper bounds 10 µs × 1.2^k.
fn log_buckets(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    let mut v: Vec<(f64, u64)> = h
        .iter_log(10_000, 1.2)
        .map(|x| (x.value_iterated_to() as f64 / 1e6, x.count_since_last_iteration()))
        .collect();
    while v.last().is_some_and(|b| b.1 == 0) {
        v.pop();
    }
    let first = v.iter().position(|b| b.1 > 0).unwrap_or(v.len());
    v.drain(..first.saturating_sub(1));
    v
}

/// A histogram of nanoseconds from 1 ns to 10 minutes at 3 significant digits.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).context("histogram bounds")
}

pub fn key(symbol: &str, timeframe: &str, sequence: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (symbol, timeframe, sequence).hash(&mut h);
    h.finish()
}

/// A NATS subscription served on its own thread and current-thread runtime (as a separate
/// process would be): `on_message` gets every message with the thread's client. Stopped and
/// joined on drop.
pub struct SubscriberThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SubscriberThread {
    /// Connects, subscribes and returns once the subscription is in place at the server.
    pub fn start<F, Fut>(
        name: &str,
        url: &str,
        subject: &str,
        mut on_message: F,
    ) -> anyhow::Result<SubscriberThread>
    where
        F: FnMut(async_nats::Client, async_nats::Message) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let (url, subject, client_name) = (url.to_string(), subject.to_string(), format!("augur-{name}"));
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let setup = async {
                        let c = async_nats::ConnectOptions::new()
                            .name(client_name)
                            .subscription_capacity(1 << 20)
                            .connect(url.as_str())
                            .await?;
                        let sub = c.subscribe(subject).await?;
                        // Ready once the server has the subscription (a flush only writes).
                        augur_service::bus::nats::round_trip(&c)
                            .await
                            .map_err(anyhow::Error::msg)?;
                        anyhow::Ok((c, sub))
                    }
                    .await;
                    let (client, mut sub) = match setup {
                        Ok(x) => {
                            let _ = ready_tx.send(Ok(()));
                            x
                        }
                        Err(err) => {
                            let _ = ready_tx.send(Err(err));
                            return;
                        }
                    };
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => break,
                            m = sub.next() => {
                                let Some(m) = m else { break };
                                on_message(client.clone(), m).await;
                            }
                        }
                    }
                });
            })
            .with_context(|| format!("starting the {name} thread"))?;
        ready_rx
            .recv()
            .with_context(|| format!("the {name} thread ended"))?
            .with_context(|| format!("{name}: connecting and subscribing"))?;
        Ok(SubscriberThread {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for SubscriberThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Receiver {
    /// Subscribes to `<prefix>.>`; returns once the subscription is in place at the server.
    pub fn start(url: &str, prefix: &str) -> anyhow::Result<Receiver> {
        let seen = Arc::new(Mutex::new(Vec::with_capacity(1 << 20)));
        let decode_errors = Arc::new(Mutex::new(0u64));
        let (s, e) = (seen.clone(), decode_errors.clone());
        let thread = SubscriberThread::start("bench-receiver", url, &format!("{prefix}.>"), move |_, m| {
            let now = unix_ns();
            match pb::EnsemblePrediction::decode(m.payload) {
                Ok(p) => {
                    let x = Seen {
                        feature_ns: p.feature_published_at_ns,
                        latency_ns: now - p.feature_published_at_ns,
                        models_used: p.models_used,
                        exit_ns: p.published_at_ns,
                        inference_us: p.members.iter().map(|m| m.inference_us).max().unwrap_or(0),
                        key: key(&p.symbol, &p.timeframe, p.sequence),
                    };
                    if let Ok(mut v) = s.lock() {
                        v.push(x);
                    }
                }
                Err(_) => {
                    if let Ok(mut n) = e.lock() {
                        *n += 1;
                    }
                }
            }
            std::future::ready(())
        })?;
        Ok(Receiver {
            seen,
            decode_errors,
            _thread: thread,
        })
    }

    /// Predictions received so far for features published in [from_ns, to_ns).
    pub fn count(&self, from_ns: i64, to_ns: i64) -> u64 {
        self.seen.lock().map_or(0, |v| {
            v.iter()
                .filter(|s| s.feature_ns >= from_ns && s.feature_ns < to_ns)
                .count() as u64
        })
    }

    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.lock().map_or(0, |n| *n)
    }

    /// Everything received for features published in [from_ns, to_ns).
    pub fn window(&self, from_ns: i64, to_ns: i64, expected_members: u32) -> anyhow::Result<Window> {
        let mut h = histogram()?;
        let (mut to_exit, mut fwd, mut out_hop) = (histogram()?, histogram()?, histogram()?);
        let mut keys = HashSet::new();
        let (mut received, mut incomplete) = (0, 0);
        let v = self
            .seen
            .lock()
            .map_err(|_| anyhow::anyhow!("receiver state poisoned"))?;
        for s in v
            .iter()
            .filter(|s| s.feature_ns >= from_ns && s.feature_ns < to_ns)
        {
            received += 1;
            keys.insert(s.key);
            if s.models_used < expected_members {
                incomplete += 1;
            }
            h.saturating_record(s.latency_ns.max(1) as u64);
            to_exit.saturating_record((s.exit_ns - s.feature_ns).max(1) as u64);
            out_hop.saturating_record((s.latency_ns - (s.exit_ns - s.feature_ns)).max(1) as u64);
            fwd.saturating_record(u64::from(s.inference_us).max(1) * 1000);
        }
        let q = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1e6
            }
        };
        Ok(Window {
            received,
            unique: keys.len() as u64,
            incomplete,
            latency: Latency::of(&h),
            breakdown: Breakdown {
                to_exit_p50_ms: q(&to_exit, 0.5),
                to_exit_p99_ms: q(&to_exit, 0.99),
                forward_p50_ms: q(&fwd, 0.5),
                forward_p99_ms: q(&fwd, 0.99),
                exit_to_receiver_p50_ms: q(&out_hop, 0.5),
                exit_to_receiver_p99_ms: q(&out_hop, 0.99),
            },
        })
    }
}

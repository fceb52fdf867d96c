//! The physical floor, measured in the same run as the scenarios: each member's raw forward
//! pass at batch 1 (no actors, no bus), and a NATS loopback round trip through the same
//! nats-server (two hops, as a feature and its prediction make).
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::receiver::SubscriberThread;
use augur_runtime::{DeviceSpec, Golden, Manifest, Model};

#[derive(Debug, Clone, Serialize)]
pub struct MemberFloor {
    pub model: String,
    pub device: String,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The same pass with 1 ms of idle between calls (S1's pace per member): caches and the
    /// core go cold between calls, as they do in the service at 1,000 vectors/s. Diagnostic;
    /// the floor is the back-to-back figure.
    pub paced_p50_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub members: Vec<MemberFloor>,
    pub nats_rtt_p50_us: f64,
    pub nats_rtt_p99_us: f64,
    /// NATS round trip + every member's batch-1 pass one after another (the work one
    /// vector needs): the floor the S1 ratio is taken against.
    pub serial_us: f64,
    /// NATS round trip + the slowest member (members running side by side on idle cores).
    pub parallel_us: f64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

/// Batch-1 forward passes of one model on its golden windows for `time`; p50 and p99 in µs.
pub fn model_batch1(dir: &Path, device: DeviceSpec, time: Duration) -> anyhow::Result<MemberFloor> {
    let model = Model::load(dir, device).with_context(|| format!("loading {}", dir.display()))?;
    let golden =
        Golden::load(model.manifest())?.with_context(|| format!("{} has no golden windows", model.id()))?;
    let len = model.preprocessor().row_len();
    let mut rows = Vec::with_capacity(len);
    // One batch-1 pass on golden window i; its forward time in µs.
    let mut pass = |i: usize| -> anyhow::Result<f64> {
        rows.clear();
        let w = golden
            .inputs
            .get((i % golden.count) * len..(i % golden.count + 1) * len)
            .context("golden windows shorter than their count")?;
        model.prepare_into(w, &mut rows)?;
        let t = Instant::now();
        std::hint::black_box(model.forward_all(&rows, 1)?);
        Ok(t.elapsed().as_secs_f64() * 1e6)
    };
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut i = 0usize;
    while start.elapsed() < time || samples.len() < 200 {
        let us = pass(i)?;
        // The first passes warm caches and allocators; the service warms before it is ready too.
        if i >= 50 {
            samples.push(us);
        }
        i += 1;
    }
    samples.sort_by(f64::total_cmp);
    let mut paced = Vec::new();
    for k in 0..300usize {
        std::thread::sleep(Duration::from_millis(1));
        paced.push(pass(k)?);
    }
    paced.sort_by(f64::total_cmp);
    Ok(MemberFloor {
        model: model.id().to_string(),
        device: model.device_name(),
        p50_us: quantile(&samples, 0.5),
        p99_us: quantile(&samples, 0.99),
        paced_p50_us: quantile(&paced, 0.5),
    })
}

/// Request/reply round trips through nats-server, the responder on its own thread and
/// connection; p50 and p99 in µs.
pub async fn nats_rtt(url: &str, rounds: usize) -> anyhow::Result<(f64, f64)> {
    let responder =
        SubscriberThread::start("bench-rtt-responder", url, "augur.bench.rtt", |c, m| async move {
            if let Some(reply) = m.reply {
                let _ = c.publish(reply, m.payload).await;
            }
        })?;
    let c = async_nats::connect(url).await.context("connecting to NATS")?;
    // A payload the size of a one-vector FeatureVectorBatch.
    let payload = bytes::Bytes::from(vec![7u8; 160]);
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + 100 {
        let t = Instant::now();
        c.request("augur.bench.rtt", payload.clone())
            .await
            .context("nats request")?;
        if i >= 100 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(responder);
    samples.sort_by(f64::total_cmp);
    Ok((quantile(&samples, 0.5), quantile(&samples, 0.99)))
}

/// The members' folders, as the service resolves them (highest version of each id).
pub fn member_dirs(models: &Path, members: &[String]) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let all = Manifest::discover(models).context("listing the model repository")?;
    let mut out = Vec::new();
    for id in members {
        let dir = all
            .iter()
            .filter(|d| {
                d.parent()
                    .and_then(Path::file_name)
                    .is_some_and(|n| n == id.as_str())
            })
            .max()
            .with_context(|| format!("model {id} not found under {}", models.display()))?;
        out.push(dir.clone());
    }
    Ok(out)
}

pub async fn measure(
    models: &Path,
    members: &[String],
    device: DeviceSpec,
    nats_url: &str,
    per_model: Duration,
) -> anyhow::Result<Floor> {
    tch::set_num_threads(1);
    tch::jit::set_graph_executor_optimize(false);
    let floors = {
        let _guard = tch::no_grad_guard();
        member_dirs(models, members)?
            .iter()
            .map(|d| model_batch1(d, device, per_model))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let (rtt50, rtt99) = nats_rtt(nats_url, 3000).await?;
    let sum: f64 = floors.iter().map(|m| m.p50_us).sum();
    let max = floors.iter().map(|m| m.p50_us).fold(0.0, f64::max);
    Ok(Floor {
        members: floors,
        nats_rtt_p50_us: rtt50,
        nats_rtt_p99_us: rtt99,
        serial_us: rtt50 + sum,
        parallel_us: rtt50 + max,
    })
}

//! `augur bench`: the benchmark harness. One run starts a nats-server, measures the floor
//! (each member's raw batch-1 forward pass and a NATS round trip), then for each peer (Augur,
//! the Python asyncio baseline) runs the scenarios with the feed ([`crate::feed::Feed`]) and a
//! receiver in this process and the peer as its own process:
//!
//! - S1 latency: 60 streams at 1,000 vectors/s; end-to-end percentiles (HdrHistogram), loss.
//! - S2 throughput: 600 streams; the rate rises step by step until p99 passes the limit or
//!   anything is lost (twice: a failing step is repeated once); the highest rate that held.
//! - S3 memory: the peer's RSS after the 600 streams are warm, and its peak.
//! - S4 start-up: process start to its ready line (every model loaded and warmed).
//!
//! Results go to `<out>/<stamp>.json` and `.md`, and `latest.json` / `latest.md`.
pub mod floor;
pub mod oip;
pub mod peer;
pub mod procfs;
pub mod receiver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use augur_actors::clock::unix_ns;
use serde::Serialize;

use crate::feed::{Feed, FeedOptions, Pace};
use augur_runtime::DeviceSpec;
use peer::{Peer, PeerKind, PeerPaths};
use receiver::{Latency, Receiver};

pub use augur_service::pb::DESCRIPTOR_SET;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    S1,
    S2,
    S3,
    S4,
    /// A model version swapped in under S1's load (Augur only).
    Swap,
    /// S5: Augur's HTTP infer against Ray Serve serving the same TorchScript model, the same
    /// closed-loop client at each concurrency (once per run, not per peer).
    Http,
}

impl Scenario {
    pub fn parse(s: &str) -> Option<Scenario> {
        match s.to_ascii_lowercase().as_str() {
            "s1" => Some(Scenario::S1),
            "s2" => Some(Scenario::S2),
            "s3" => Some(Scenario::S3),
            "s4" => Some(Scenario::S4),
            "swap" => Some(Scenario::Swap),
            "s5" | "http" => Some(Scenario::Http),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The repository root: models/, models/data, config.toml.
    pub root: PathBuf,
    pub config: PathBuf,
    pub peers: Vec<PeerKind>,
    pub scenarios: Vec<Scenario>,
    /// cpu | cuda | cuda:N (the torch members' device, for both peers).
    pub device: String,
    pub python: PathBuf,
    pub out: PathBuf,
    pub s1_symbols: usize,
    pub s1_rate: f64,
    pub s1_seconds: f64,
    pub s2_symbols: usize,
    pub s2_rates: Vec<f64>,
    pub s2_step_seconds: f64,
    pub s2_p99_limit_ms: f64,
    pub s4_starts: usize,
    /// Rounds (one vector per stream) sent before measuring, to fill every window.
    pub warmup_rounds: u64,
    pub floor_seconds: f64,
    pub timeframes: Vec<String>,
    /// S5: the model both servers serve, the concurrencies, the measured seconds per cell.
    pub http_model: String,
    pub http_concurrency: Vec<usize>,
    pub http_seconds: f64,
    /// S5: Ray Serve's ingress modes run, each its own peer: "proxy" (its default HTTP proxy
    /// actor), "haproxy" (its high-throughput mode).
    pub http_ray_ingress: Vec<String>,
}

impl BenchOptions {
    pub fn new(root: &Path) -> BenchOptions {
        BenchOptions {
            root: root.to_path_buf(),
            config: root.join("config.toml"),
            peers: vec![PeerKind::Augur, PeerKind::PythonAsyncio],
            scenarios: vec![
                Scenario::S1,
                Scenario::S2,
                Scenario::S3,
                Scenario::S4,
                Scenario::Http,
            ],
            device: "cpu".into(),
            python: root.join(".venv/bin/python"),
            out: root.join("bench/results"),
            s1_symbols: 10,
            s1_rate: 1000.0,
            s1_seconds: 20.0,
            s2_symbols: 100,
            s2_rates: vec![
                250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 15000.0, 20000.0, 25000.0, 30000.0, 40000.0,
            ],
            s2_step_seconds: 6.0,
            s2_p99_limit_ms: 10.0,
            s4_starts: 3,
            warmup_rounds: 40,
            floor_seconds: 1.0,
            timeframes: ["1m", "5m", "15m", "1h", "4h", "1d"].map(String::from).to_vec(),
            http_model: "lstm-direction".into(),
            http_concurrency: vec![1, 16],
            http_seconds: 10.0,
            http_ray_ingress: vec!["proxy".into(), "haproxy".into()],
        }
    }
}

/// One measured stretch of feed at a fixed rate.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub streams: usize,
    pub target_rate: f64,
    pub seconds: f64,
    pub sent: u64,
    /// Vectors per second the feed achieved.
    pub sent_rate: f64,
    pub received: u64,
    /// Vectors sent with no prediction received (after the drain wait).
    pub lost: u64,
    pub duplicates: u64,
    pub incomplete: u64,
    /// Predictions per second (received / feed time).
    pub throughput: f64,
    pub latency: Latency,
    pub breakdown: receiver::Breakdown,
    /// CPU cores used over the phase: the peer, nats-server, and this process (feed + receiver).
    pub peer_cpu_cores: f64,
    pub nats_cpu_cores: f64,
    pub bench_cpu_cores: f64,
    pub peer_rss_mb: f64,
    /// Augur only, from its /metrics over the phase: mean rows per forward pass and mean
    /// forward time (all members), and vectors the service dropped or left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceCounters>,
    /// S2: whether the step held (no loss, p99 within the limit, the feed kept its rate).
    pub held: bool,
    /// S2: 1, or 2 for the repeat of a step that failed.
    pub attempt: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ServiceCounters {
    pub mean_batch_rows: f64,
    pub mean_forward_us: f64,
    pub dropped: f64,
    pub deadline_misses: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub streams: usize,
    pub steps: Vec<Phase>,
    /// The highest step rate that held, and what it measured.
    pub max_held_rate: Option<f64>,
    pub max_held_throughput: Option<f64>,
    pub max_held_model_inferences: Option<f64>,
    /// CPU efficiency at it: model inferences per second of the peer's CPU (all its threads).
    pub max_held_inferences_per_core_s: Option<f64>,
    pub max_held_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub streams: usize,
    pub members: usize,
    pub rss_after_warmup_mb: f64,
    pub peak_rss_mb: f64,
    /// Resident memory just after ready (no streams yet), and its parts (/proc/PID/smaps).
    pub rss_at_idle_mb: f64,
    pub at_idle: Vec<procfs::MemPart>,
    /// The parts after the warm-up.
    pub after_warmup: Vec<procfs::MemPart>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Startup {
    pub start_to_ready_ms: Vec<f64>,
    pub median_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerReport {
    pub peer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s1: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s2: Option<Throughput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s4: Option<Startup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap: Option<SwapReport>,
    /// A scenario that could not run, with why.
    pub errors: Vec<String>,
}

/// A version swapped in under load: S1's load before it (steady), a phase of the same length
/// with the swap in it (v1 -> v2, loaded from the repository), and one with the swap back
/// (v2 -> v1, which stayed loaded and idle). Each window is the features published from a
/// second before its load request until two seconds after its answer.
#[derive(Debug, Clone, Serialize)]
pub struct SwapReport {
    pub model: String,
    pub steady: Phase,
    pub with_swap: Phase,
    /// From the load request to its answer (checks, self-test, warm-up, swap).
    pub load_ms: f64,
    pub window: Latency,
    pub window_received: u64,
    pub window_incomplete: u64,
    /// The swap back to the idle version 1.
    pub with_swap_back: Phase,
    pub back_ms: f64,
    pub back_window: Latency,
    pub back_window_received: u64,
    pub back_window_incomplete: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub stamp: String,
    pub machine: String,
    pub commit: Option<String>,
    pub device: String,
    pub members: Vec<String>,
    pub method: String,
    pub floor: floor::Floor,
    pub peers: Vec<PeerReport>,
    /// S5, when run.
    pub http: Option<HttpReport>,
    pub command: String,
}

/// S5: one model over HTTP infer, Augur against Ray Serve, the same client.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpReport {
    pub model: String,
    /// The model folder both served (Ray Serve its TorchScript file).
    pub model_dir: String,
    pub seconds_per_cell: f64,
    /// Augur first, then each Ray Serve ingress mode.
    pub servers: Vec<HttpServer>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpServer {
    /// "augur", "ray_serve (proxy)", "ray_serve (haproxy)".
    pub name: String,
    pub cells: Vec<oip::Cell>,
    pub start_to_ready_ms: f64,
}

/// A nats-server on a free loopback port for the run, killed when dropped.
struct NatsServer {
    child: Child,
    url: String,
}

impl NatsServer {
    fn start() -> anyhow::Result<NatsServer> {
        let bin = ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })
            .context("nats-server not found: run scripts/bootstrap.sh")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// UTC `YYYY-MM-DDTHH-MM-SSZ` (file-name safe).
fn stamp() -> String {
    let secs = unix_ns() / 1_000_000_000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

struct Run<'a> {
    o: &'a BenchOptions,
    nats: &'a NatsServer,
    receiver: &'a Receiver,
    members: u32,
    logs: PathBuf,
    paths: PeerPaths,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Run<'_> {
    async fn feed(&self, symbols: usize) -> anyhow::Result<Feed> {
        let fo = FeedOptions {
            nats_url: Some(self.nats.url.clone()),
            nats_prefix: "features".into(),
            kafka_brokers: None,
            kafka_topic: String::new(),
            symbols,
            timeframes: self.o.timeframes.clone(),
            rate: 0.0,
            count: 0,
            duration: None,
        };
        Feed::connect(
            crate::feed::streams(&self.o.root.join("models/data"), symbols, &self.o.timeframes)?,
            &fo,
        )
        .await
    }

    fn start(&self, kind: PeerKind, what: &str) -> anyhow::Result<Peer> {
        let log = self.logs.join(format!("{}-{what}.log", kind.name()));
        eprintln!("bench: starting {} for {what}", kind.name());
        Peer::start(kind, &self.paths, &self.nats.url, &log, Duration::from_secs(120))
    }

    /// Sends `rounds` vectors per stream, then waits until the predictions stop coming.
    async fn warm_up(&mut self, feed: &mut Feed, rate: f64) -> anyhow::Result<()> {
        let count = self.o.warmup_rounds * feed.stream_count() as u64;
        eprintln!(
            "bench: warm-up, {count} vectors over {} streams at {rate}/s",
            feed.stream_count()
        );
        let t0 = unix_ns();
        let pace = Pace {
            rate,
            count,
            duration: None,
            progress: false,
        };
        feed.send(&pace, &mut self.stop).await?;
        self.drain(t0, unix_ns(), u64::MAX, Duration::from_secs(1)).await;
        Ok(())
    }

    /// Waits until `want` predictions arrived for features published in [t0, t1), or none
    /// arrived for `quiet`, or two minutes passed.
    async fn drain(&self, t0: i64, t1: i64, want: u64, quiet: Duration) {
        let started = Instant::now();
        let (mut last, mut last_change) = (0, Instant::now());
        loop {
            let n = self.receiver.count(t0, t1);
            if n >= want || last_change.elapsed() >= quiet || started.elapsed() > Duration::from_secs(120) {
                return;
            }
            if n != last {
                (last, last_change) = (n, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One measured phase at `rate` for `seconds`.
    async fn phase(
        &mut self,
        feed: &mut Feed,
        peer: &Peer,
        nats_pid: u32,
        rate: f64,
        seconds: f64,
    ) -> anyhow::Result<Phase> {
        let me = std::process::id();
        let metrics0 = peer
            .http
            .as_ref()
            .and_then(|a| peer::http_get(a, "/metrics").ok());
        let (p0, n0, b0) = (
            peer.cpu_seconds().unwrap_or(0.0),
            procfs::cpu_seconds(nats_pid).unwrap_or(0.0),
            procfs::cpu_seconds(me).unwrap_or(0.0),
        );
        let wall = Instant::now();
        let t0 = unix_ns();
        let pace = Pace {
            rate,
            count: 0,
            duration: Some(Duration::from_secs_f64(seconds)),
            progress: false,
        };
        let sent = feed.send(&pace, &mut self.stop).await?;
        let t1 = unix_ns();
        let feed_secs = wall.elapsed().as_secs_f64();
        let (p1, n1, b1) = (
            peer.cpu_seconds().unwrap_or(0.0),
            procfs::cpu_seconds(nats_pid).unwrap_or(0.0),
            procfs::cpu_seconds(me).unwrap_or(0.0),
        );
        self.drain(t0, t1, sent, Duration::from_secs(3)).await;
        let w = self.receiver.window(t0, t1, self.members)?;
        let metrics1 = peer
            .http
            .as_ref()
            .and_then(|a| peer::http_get(a, "/metrics").ok());
        let service = match (metrics0, metrics1) {
            (Some(a), Some(b)) => {
                let d = |name: &str| peer::metric_sum(&b, name) - peer::metric_sum(&a, name);
                let calls = d("augur_inference_batch_size_count");
                let passes = d("augur_inference_duration_seconds_count");
                Some(ServiceCounters {
                    mean_batch_rows: if calls > 0.0 {
                        d("augur_inference_batch_size_sum") / calls
                    } else {
                        0.0
                    },
                    mean_forward_us: if passes > 0.0 {
                        d("augur_inference_duration_seconds_sum") / passes * 1e6
                    } else {
                        0.0
                    },
                    dropped: d("augur_mailbox_full_total")
                        + d("augur_nats_slow_consumer_drops_total")
                        + d("augur_events_dropped_total"),
                    deadline_misses: d("augur_aggregator_deadline_misses_total"),
                })
            }
            _ => None,
        };
        let lost = sent.saturating_sub(w.unique);
        let sent_rate = sent as f64 / feed_secs;
        Ok(Phase {
            streams: feed.stream_count(),
            target_rate: rate,
            seconds: feed_secs,
            sent,
            sent_rate,
            received: w.received,
            lost,
            duplicates: w.received.saturating_sub(w.unique),
            incomplete: w.incomplete,
            throughput: w.received as f64 / feed_secs,
            latency: w.latency.clone(),
            breakdown: w.breakdown.clone(),
            peer_cpu_cores: (p1 - p0) / feed_secs,
            nats_cpu_cores: (n1 - n0) / feed_secs,
            bench_cpu_cores: (b1 - b0) / feed_secs,
            peer_rss_mb: peer.rss().map_or(0.0, |r| r.0 as f64 / 1e6),
            service,
            held: lost == 0
                && w.latency.p99_ms <= self.o.s2_p99_limit_ms
                && (rate <= 0.0 || sent_rate >= 0.95 * rate),
            attempt: 1,
        })
    }

    fn print_phase(name: &str, p: &Phase) {
        eprintln!(
            "bench: {name}: {} streams, {:.0}/s sent, {} received, lost {}, p50 {:.3} ms p99 {:.3} ms max {:.3} ms (p50: to exit {:.3}, forward {:.3}, exit to receiver {:.3}), peer {:.2} cores{}",
            p.streams,
            p.sent_rate,
            p.received,
            p.lost,
            p.latency.p50_ms,
            p.latency.p99_ms,
            p.latency.max_ms,
            p.breakdown.to_exit_p50_ms,
            p.breakdown.forward_p50_ms,
            p.breakdown.exit_to_receiver_p50_ms,
            p.peer_cpu_cores,
            p.service
                .as_ref()
                .map(|s| format!(
                    ", batch {:.1} rows, forward {:.0} µs",
                    s.mean_batch_rows, s.mean_forward_us
                ))
                .unwrap_or_default()
        );
    }

    /// Swaps `lstm-direction` version 1 for version 2 (the retrained candidate,
    /// `models/candidates/lstm-direction/2`, copied in and sealed with `sha256sum * >
    /// SHA256SUMS` as an operator would) under S1's load, then back to version 1 (idle).
    async fn swap(&mut self, nats_pid: u32) -> anyhow::Result<SwapReport> {
        const MODEL: &str = "lstm-direction";
        const TOKEN: &str = "bench-swap";
        let repo = self.logs.join("swap-models");
        let _ = std::fs::remove_dir_all(&repo);
        std::fs::create_dir_all(&repo)?;
        let cfg = augur_service::config::Config::load(Some(&self.o.config))?;
        let mut ids = cfg.service.members.clone();
        ids.push(cfg.service.stacker.clone());
        for m in ids.iter().filter(|m| !m.is_empty()) {
            let ok = std::process::Command::new("cp")
                .arg("-r")
                .arg(self.o.root.join("models").join(m))
                .arg(&repo)
                .status()?
                .success();
            anyhow::ensure!(ok, "copying {m}");
        }
        let mut paths = self.paths.clone();
        paths.env = vec![
            ("AUGUR_SERVICE__MODELS_DIR".into(), repo.display().to_string()),
            (
                "AUGUR_SERVICE__FEATURE_SETS_DIR".into(),
                self.o.root.join("models/feature_sets").display().to_string(),
            ),
            ("AUGUR_HTTP__TOKEN".into(), TOKEN.into()),
        ];
        let log = self.logs.join("augur-swap.log");
        eprintln!("bench: starting augur for the swap");
        let peer = Peer::start(
            PeerKind::Augur,
            &paths,
            &self.nats.url,
            &log,
            Duration::from_secs(120),
        )?;
        let addr = peer.http.clone().context("augur has an HTTP address")?;
        // Version 2 lands in the repository once version 1 serves (start-up takes the newest).
        let version = |addr: &str| -> anyhow::Result<String> {
            let m: serde_json::Value =
                serde_json::from_str(&peer::http_get(addr, &format!("/v2/models/{MODEL}"))?)?;
            Ok(m["versions"][0].as_str().unwrap_or_default().to_string())
        };
        anyhow::ensure!(version(&addr)? == "1", "version 1 serves at start");
        let (one, two) = (
            self.o.root.join("models/candidates").join(MODEL).join("2"),
            repo.join(MODEL).join("2"),
        );
        std::fs::create_dir_all(&two)?;
        for e in std::fs::read_dir(&one)? {
            let e = e?;
            if e.file_name() != "SHA256SUMS" {
                std::fs::copy(e.path(), two.join(e.file_name()))?;
            }
        }
        let sealed = std::process::Command::new("sh")
            .arg("-c")
            .arg("sha256sum * > SHA256SUMS")
            .current_dir(&two)
            .status()?
            .success();
        anyhow::ensure!(sealed, "sha256sum in {}", two.display());
        let mut feed = self.feed(self.o.s1_symbols).await?;
        self.warm_up(&mut feed, self.o.s1_rate).await?;
        let steady = self
            .phase(&mut feed, &peer, nats_pid, self.o.s1_rate, self.o.s1_seconds)
            .await?;
        Self::print_phase("augur swap: steady", &steady);
        let delay = Duration::from_secs_f64((self.o.s1_seconds / 4.0).max(1.0));
        let loader = tokio::task::spawn_blocking(move || {
            std::thread::sleep(delay);
            let t0 = unix_ns();
            let r = peer::http_post(
                &addr,
                &format!("/v2/repository/models/{MODEL}/load"),
                TOKEN,
                r#"{"parameters": {"version": "2"}}"#,
            );
            (t0, unix_ns(), r)
        });
        let with_swap = self
            .phase(&mut feed, &peer, nats_pid, self.o.s1_rate, self.o.s1_seconds)
            .await?;
        Self::print_phase("augur swap: with the swap", &with_swap);
        let (t0, t1, answer) = loader.await?;
        let (code, body) = answer?;
        anyhow::ensure!(code == 200, "the load answered {code}: {body}");
        let w = self
            .receiver
            .window(t0 - 1_000_000_000, t1 + 2_000_000_000, self.members)?;
        anyhow::ensure!(
            version(peer.http.as_deref().unwrap_or_default())? == "2",
            "version 2 does not serve"
        );
        // Back to version 1, which the swap kept loaded and idle (max_loaded_versions = 2).
        let addr = peer.http.clone().context("augur has an HTTP address")?;
        let loader = tokio::task::spawn_blocking(move || {
            std::thread::sleep(delay);
            let t0 = unix_ns();
            let r = peer::http_post(
                &addr,
                &format!("/v2/repository/models/{MODEL}/load"),
                TOKEN,
                r#"{"parameters": {"version": "1"}}"#,
            );
            (t0, unix_ns(), r)
        });
        let with_swap_back = self
            .phase(&mut feed, &peer, nats_pid, self.o.s1_rate, self.o.s1_seconds)
            .await?;
        Self::print_phase("augur swap: with the swap back", &with_swap_back);
        let (b0, b1, answer) = loader.await?;
        let (code, body) = answer?;
        anyhow::ensure!(code == 200, "the load back answered {code}: {body}");
        let back = self
            .receiver
            .window(b0 - 1_000_000_000, b1 + 2_000_000_000, self.members)?;
        anyhow::ensure!(
            version(peer.http.as_deref().unwrap_or_default())? == "1",
            "version 1 does not serve again"
        );
        peer.stop(Duration::from_secs(15))?;
        let r = SwapReport {
            model: MODEL.into(),
            steady,
            with_swap,
            load_ms: (t1 - t0) as f64 / 1e6,
            window: w.latency.clone(),
            window_received: w.received,
            window_incomplete: w.incomplete,
            with_swap_back,
            back_ms: (b1 - b0) as f64 / 1e6,
            back_window: back.latency.clone(),
            back_window_received: back.received,
            back_window_incomplete: back.incomplete,
        };
        eprintln!(
            "bench: swap: load took {:.0} ms; p99 steady {:.2} ms, with the swap {:.2} ms, around it {:.2} ms; back to the idle version in {:.1} ms, p99 around it {:.2} ms",
            r.load_ms,
            r.steady.latency.p99_ms,
            r.with_swap.latency.p99_ms,
            r.window.p99_ms,
            r.back_ms,
            r.back_window.p99_ms
        );
        Ok(r)
    }

    async fn s1(&mut self, kind: PeerKind, nats_pid: u32) -> anyhow::Result<Phase> {
        let peer = self.start(kind, "s1")?;
        let mut feed = self.feed(self.o.s1_symbols).await?;
        self.warm_up(&mut feed, self.o.s1_rate).await?;
        let p = self
            .phase(&mut feed, &peer, nats_pid, self.o.s1_rate, self.o.s1_seconds)
            .await?;
        Self::print_phase(&format!("{} S1", kind.name()), &p);
        peer.stop(Duration::from_secs(15))?;
        Ok(p)
    }

    async fn s2(&mut self, kind: PeerKind, nats_pid: u32) -> anyhow::Result<(Throughput, Memory)> {
        let mut peer = self.start(kind, "s2")?;
        let rss_idle = peer.rss().map_or(0.0, |r| r.0 as f64 / 1e6);
        let at_idle = procfs::smaps_breakdown(peer.pid()).unwrap_or_default();
        let mut feed = self.feed(self.o.s2_symbols).await?;
        let first = self.o.s2_rates.first().copied().unwrap_or(1000.0);
        self.warm_up(&mut feed, first.max(2000.0)).await?;
        let rss_warm = peer.rss().map_or(0.0, |r| r.0 as f64 / 1e6);
        let after_warmup = procfs::smaps_breakdown(peer.pid()).unwrap_or_default();
        let mut steps: Vec<Phase> = Vec::new();
        // A step that fails is run once more (a single stall on a shared 2-core machine should
        // not end the ramp); the ramp ends when a rate fails twice.
        'ramp: for &rate in &self.o.s2_rates {
            for attempt in 1..=2 {
                if !peer.is_running() {
                    anyhow::bail!("{} exited during S2", kind.name());
                }
                let mut p = self
                    .phase(&mut feed, &peer, nats_pid, rate, self.o.s2_step_seconds)
                    .await?;
                p.attempt = attempt;
                // The distribution is drawn for S1 only; S2's steps keep their percentiles.
                p.latency.histogram.clear();
                Self::print_phase(&format!("{} S2 {rate}/s (attempt {attempt})", kind.name()), &p);
                let held = p.held;
                steps.push(p);
                if *self.stop.borrow() {
                    break 'ramp;
                }
                if held {
                    continue 'ramp;
                }
            }
            break;
        }
        let peak = peer.rss().map_or(0.0, |r| r.1 as f64 / 1e6);
        peer.stop(Duration::from_secs(30))?;
        let best = steps.iter().rfind(|p| p.held);
        let mem = Memory {
            streams: feed.stream_count(),
            members: self.members as usize,
            rss_after_warmup_mb: rss_warm,
            peak_rss_mb: peak,
            rss_at_idle_mb: rss_idle,
            at_idle,
            after_warmup,
        };
        Ok((
            Throughput {
                streams: feed.stream_count(),
                max_held_rate: best.map(|p| p.target_rate),
                max_held_throughput: best.map(|p| p.throughput),
                max_held_model_inferences: best.map(|p| p.throughput * f64::from(self.members)),
                max_held_inferences_per_core_s: best
                    .filter(|p| p.peer_cpu_cores > 0.0)
                    .map(|p| p.throughput * f64::from(self.members) / p.peer_cpu_cores),
                max_held_p99_ms: best.map(|p| p.latency.p99_ms),
                steps,
            },
            mem,
        ))
    }

    fn s4(&self, kind: PeerKind) -> anyhow::Result<Startup> {
        let mut v = Vec::new();
        for i in 0..self.o.s4_starts {
            let p = self.start(kind, &format!("s4-{i}"))?;
            v.push(p.start_to_ready.as_secs_f64() * 1e3);
            p.stop(Duration::from_secs(15))?;
        }
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        Ok(Startup {
            median_ms: s.get(s.len() / 2).copied().unwrap_or(0.0),
            max_ms: s.last().copied().unwrap_or(0.0),
            start_to_ready_ms: v,
        })
    }
}

impl Run<'_> {
    /// S5: Augur's HTTP infer, then Ray Serve's, for the same model and window, each alone on
    /// the machine while measured. A peer that fails is an error in the report, not the run's.
    async fn http(&mut self) -> HttpReport {
        let o = self.o;
        let mut r = HttpReport {
            model: o.http_model.clone(),
            seconds_per_cell: o.http_seconds,
            ..HttpReport::default()
        };
        let dir = match model_dir(&self.paths.models, &o.http_model) {
            Ok(d) => d,
            Err(e) => {
                r.errors.push(format!("{e:#}"));
                return r;
            }
        };
        r.model_dir = dir.display().to_string();
        let bench = |http: String| oip::OipBench {
            http,
            grpc: String::new(),
            token: String::new(),
            models: vec![o.http_model.clone()],
            concurrency: o.http_concurrency.clone(),
            seconds: o.http_seconds,
            warmup_seconds: 2.0,
            transports: vec!["http"],
        };
        match self.start(PeerKind::Augur, "http") {
            Ok(peer) => measure_server(&mut r, "augur", peer, bench, &o.root, Duration::from_secs(15)).await,
            Err(e) => r.errors.push(format!("augur: {e:#}")),
        }
        let script = o.root.join("bench/peers/ray_serve/serve.py");
        for ingress in &o.http_ray_ingress {
            if *self.stop.borrow() {
                break;
            }
            let name = format!("ray_serve ({ingress})");
            let log = self.logs.join(format!("ray_serve-{ingress}-http.log"));
            eprintln!("bench: starting {name} for http (a local Ray: up to a minute)");
            match Peer::start_ray_serve(
                &self.paths,
                &script,
                &dir,
                &o.http_model,
                ingress,
                &log,
                Duration::from_secs(240),
            ) {
                Ok(peer) => {
                    measure_server(&mut r, &name, peer, bench, &o.root, Duration::from_secs(60)).await
                }
                Err(e) => r.errors.push(format!("{name}: {e:#} (see {})", log.display())),
            }
        }
        r
    }
}

/// One S5 server: the client's cells against the started `peer`, then the peer stopped (up
/// to `grace`); its failures are the report's errors, under `name`.
async fn measure_server(
    r: &mut HttpReport,
    name: &str,
    peer: Peer,
    bench: impl Fn(String) -> oip::OipBench,
    root: &Path,
    grace: Duration,
) {
    let mut server = HttpServer {
        name: name.to_string(),
        start_to_ready_ms: peer.start_to_ready.as_secs_f64() * 1e3,
        ..HttpServer::default()
    };
    match measure_http(bench(peer.http.clone().unwrap_or_default()), root).await {
        Ok(cells) => server.cells = cells,
        Err(e) => r.errors.push(format!("{name}: {e:#}")),
    }
    if let Err(e) = peer.stop(grace) {
        r.errors.push(format!("{name}: stopping: {e:#}"));
    }
    r.servers.push(server);
}

/// The serving folder of `model` under the models root.
fn model_dir(models: &Path, model: &str) -> anyhow::Result<PathBuf> {
    for dir in augur_runtime::Manifest::discover(models)? {
        if augur_runtime::Manifest::load(&dir)?.id == model {
            return Ok(dir);
        }
    }
    anyhow::bail!("no model {model} under {}", models.display())
}

/// The client's cells against one server: its metadata gives the window's shape.
async fn measure_http(o: oip::OipBench, root: &Path) -> anyhow::Result<Vec<oip::Cell>> {
    let model = o.models.first().cloned().unwrap_or_default();
    let (t, f) = oip::input_shape(&o.http, &model).await?;
    let w = oip::replay_window(root, t, f)?;
    oip::run(&o, |_| Ok((w.clone(), t, f))).await
}

/// Runs the benchmark; writes the report and returns it.
pub async fn run(
    o: &BenchOptions,
    stop: tokio::sync::watch::Receiver<bool>,
    command: String,
) -> anyhow::Result<Report> {
    let cfg = augur_service::config::Config::load(Some(&o.config))?;
    let device = DeviceSpec::parse(&o.device).with_context(|| format!("unknown device {:?}", o.device))?;
    let models = if cfg.service.models_dir.is_absolute() {
        cfg.service.models_dir.clone()
    } else {
        o.root.join(&cfg.service.models_dir)
    };
    let stamp = stamp();
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let logs = std::env::temp_dir().join(format!("augur-bench-{stamp}"));
    std::fs::create_dir_all(&logs)?;
    let descriptor_set = logs.join("augur.fds");
    std::fs::write(&descriptor_set, DESCRIPTOR_SET)?;
    eprintln!("bench: logs in {}", logs.display());

    let nats = NatsServer::start()?;
    eprintln!("bench: nats-server at {}; measuring the floor", nats.url);
    let floor = floor::measure(
        &models,
        &cfg.service.members,
        device,
        &nats.url,
        Duration::from_secs_f64(o.floor_seconds),
    )
    .await?;
    for m in &floor.members {
        eprintln!(
            "bench: floor {} batch 1 p50 {:.1} µs (1 ms apart: {:.1} µs)",
            m.model, m.p50_us, m.paced_p50_us
        );
    }
    eprintln!(
        "bench: floor NATS round trip p50 {:.1} µs; floor {:.1} µs serial, {:.1} µs parallel",
        floor.nats_rtt_p50_us, floor.serial_us, floor.parallel_us
    );
    let receiver = Receiver::start(&nats.url, &cfg.nats.output_prefix)?;
    let mut run = Run {
        o,
        nats: &nats,
        receiver: &receiver,
        members: cfg.service.members.len() as u32,
        logs: logs.clone(),
        paths: PeerPaths {
            augur_bin: std::env::current_exe().context("locating the augur binary")?,
            config: o.config.clone(),
            python: o.python.clone(),
            python_peer: o.root.join("bench/peers/python_asyncio/service.py"),
            models: models.clone(),
            descriptor_set,
            device: o.device.clone(),
            env: Vec::new(),
        },
        stop,
    };
    let nats_pid = nats.child.id();
    let mut peers = Vec::new();
    for &kind in &o.peers {
        let mut r = PeerReport {
            peer: kind.name().into(),
            ..PeerReport::default()
        };
        for &s in &o.scenarios {
            if *run.stop.borrow() {
                break;
            }
            let res: anyhow::Result<()> = match s {
                Scenario::S1 => run.s1(kind, nats_pid).await.map(|p| r.s1 = Some(p)),
                // S3 is measured in S2's process; run S2 for it when S2 itself is not asked.
                Scenario::S2 => run.s2(kind, nats_pid).await.map(|(t, m)| {
                    r.s2 = Some(t);
                    if o.scenarios.contains(&Scenario::S3) {
                        r.s3 = Some(m);
                    }
                }),
                Scenario::S3 if !o.scenarios.contains(&Scenario::S2) => {
                    run.s2(kind, nats_pid).await.map(|(_, m)| r.s3 = Some(m))
                }
                Scenario::S3 => Ok(()),
                Scenario::S4 => run.s4(kind).map(|s| r.s4 = Some(s)),
                Scenario::Swap | Scenario::Http if kind != PeerKind::Augur => Ok(()),
                Scenario::Http => Ok(()),
                Scenario::Swap => run.swap(nats_pid).await.map(|s| r.swap = Some(s)),
            };
            if let Err(e) = res {
                eprintln!("bench: {} {s:?} failed: {e:#}", kind.name());
                r.errors.push(format!("{s:?}: {e:#}"));
            }
        }
        peers.push(r);
    }
    let http =
        if o.scenarios.contains(&Scenario::Http) && o.peers.contains(&PeerKind::Augur) && !*run.stop.borrow()
        {
            Some(run.http().await)
        } else {
            None
        };
    drop(receiver);
    let report = Report {
        stamp: stamp.clone(),
        machine: procfs::machine(),
        commit: procfs::git_commit(&o.root),
        device: o.device.clone(),
        members: cfg.service.members.clone(),
        method: format!("{:?}", cfg.aggregator.method),
        floor,
        peers,
        http,
        command,
    };
    let json = serde_json::to_string_pretty(&report)?;
    let md = markdown(&report, o);
    for (name, body) in [
        (format!("{stamp}.json"), &json),
        (format!("{stamp}.md"), &md),
        ("latest.json".to_string(), &json),
        ("latest.md".to_string(), &md),
    ] {
        std::fs::write(o.out.join(&name), body).with_context(|| format!("writing {name}"))?;
    }
    println!("{md}");
    eprintln!("bench: wrote {}/{stamp}.json and .md", o.out.display());
    Ok(report)
}

/// S5's table: Augur beside each Ray Serve mode at each concurrency, and issue 17's targets.
pub fn http_markdown(h: &HttpReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "S5 HTTP infer, {} ({}), Augur (the runtime its manifest names) against Ray Serve (bench/peers/ray_serve: the manifest's TorchScript file, @serve.batch of 16 rows with a 1 ms wait) in each ingress mode: the same closed-loop client, a binary-data request of one real window, {:.0} s a cell after 2 s of warm-up, each server alone on the machine.",
        h.model, h.model_dir, h.seconds_per_cell
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| server | start → ready ms | concurrency | requests/s | p50 µs | p90 µs | p99 µs | errors |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for v in &h.servers {
        for c in &v.cells {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {:.0} | {} | {} | {} | {} |",
                v.name,
                v.start_to_ready_ms,
                c.concurrency,
                c.requests_per_s,
                c.p50_us,
                c.p90_us,
                c.p99_us,
                c.errors
            );
        }
    }
    let cell = |v: &HttpServer, c: usize| v.cells.iter().find(|x| x.concurrency == c).cloned();
    if let Some(aug) = h.servers.iter().find(|v| v.name == "augur") {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| against | requests/s at concurrency 16, augur / it | target ≥ 20 | p50 at concurrency 1, augur / it | target ≤ 0.1 |"
        );
        let _ = writeln!(s, "|---|---:|---|---:|---|");
        for v in h.servers.iter().filter(|v| v.name != "augur") {
            let rps = match (cell(aug, 16), cell(v, 16)) {
                (Some(a), Some(b)) if b.requests_per_s > 0.0 => Some(a.requests_per_s / b.requests_per_s),
                _ => None,
            };
            let p50 = match (cell(aug, 1), cell(v, 1)) {
                (Some(a), Some(b)) if b.p50_us > 0 => Some(a.p50_us as f64 / b.p50_us as f64),
                _ => None,
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                v.name,
                fmt(rps, 1),
                meets("≥ 20", rps),
                fmt(p50, 3),
                meets("≤ 0.1", p50)
            );
        }
    }
    for e in &h.errors {
        let _ = writeln!(s, "\nS5 error: {e}");
    }
    s
}

/// Whether `v` meets a target written "≤ x", "≥ x" or "x" (exactly): "yes", "no", or ""
/// when there is no target or no value.
fn meets(target: &str, v: Option<f64>) -> &'static str {
    let Some(v) = v else { return "" };
    let num = |t: &str| t.trim().replace(',', "").parse::<f64>().ok();
    let ok = if let Some(t) = target.strip_prefix('≤') {
        num(t).map(|t| v <= t)
    } else if let Some(t) = target.strip_prefix('≥') {
        num(t).map(|t| v >= t)
    } else {
        num(target).map(|t| v == t)
    };
    match ok {
        Some(true) => "yes",
        Some(false) => "no",
        None => "",
    }
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The report as Markdown: the summary table (every scenario, the floor, the ratios), then
/// the S2 steps of each peer.
pub fn markdown(r: &Report, o: &BenchOptions) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Benchmark {} ({})",
        r.stamp,
        r.commit.as_deref().unwrap_or("no commit")
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Machine: {}. Device: {}. Members: {} ({}).",
        r.machine,
        r.device,
        r.members.join(", "),
        r.method
    );
    let _ = writeln!(s, "Command: `{}`", r.command);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Floor (same run): NATS loopback round trip p50 {:.1} µs (p99 {:.1});",
        r.floor.nats_rtt_p50_us, r.floor.nats_rtt_p99_us
    );
    for m in &r.floor.members {
        let _ = writeln!(
            s,
            "{} batch 1 on {}: p50 {:.1} µs (p99 {:.1}; with 1 ms idle between calls: p50 {:.1});",
            m.model, m.device, m.p50_us, m.p99_us, m.paced_p50_us
        );
    }
    let _ = writeln!(
        s,
        "floor = round trip + members one after another = **{:.1} µs** (members side by side: {:.1} µs).",
        r.floor.serial_us, r.floor.parallel_us
    );
    let _ = writeln!(s);
    let aug = r.peers.iter().find(|p| p.peer == "augur");
    let base = r.peers.iter().find(|p| p.peer == "python_asyncio");
    let _ = writeln!(
        s,
        "| scenario | measure | target | augur | python_asyncio | augur / python | augur meets it |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---|");
    type Get = fn(&PeerReport, &Report) -> Option<f64>;
    let floor_ms = r.floor.serial_us / 1e3;
    let s1_streams = o.s1_symbols * o.timeframes.len();
    let s2_streams = o.s2_symbols * o.timeframes.len();
    let rows: Vec<(String, &str, &str, Get, usize)> = vec![
        (
            format!("S1 latency, {s1_streams} streams, {} /s", o.s1_rate),
            "p50 ms",
            "≤ 0.5",
            |p, _| p.s1.as_ref().map(|x| x.latency.p50_ms),
            3,
        ),
        (
            "S1".into(),
            "p90 ms",
            "",
            |p, _| p.s1.as_ref().map(|x| x.latency.p90_ms),
            3,
        ),
        (
            "S1".into(),
            "p99 ms",
            "≤ 1.0",
            |p, _| p.s1.as_ref().map(|x| x.latency.p99_ms),
            3,
        ),
        (
            "S1".into(),
            "p99.9 ms",
            "",
            |p, _| p.s1.as_ref().map(|x| x.latency.p999_ms),
            3,
        ),
        (
            "S1".into(),
            "max ms",
            "",
            |p, _| p.s1.as_ref().map(|x| x.latency.max_ms),
            3,
        ),
        (
            "S1".into(),
            "p50 / floor",
            "≤ 1.5",
            |p, r| {
                p.s1.as_ref()
                    .map(|x| x.latency.p50_ms / (r.floor.serial_us / 1e3))
            },
            2,
        ),
        (
            "S1".into(),
            "predictions/s",
            "",
            |p, _| p.s1.as_ref().map(|x| x.throughput),
            0,
        ),
        (
            "S1".into(),
            "lost",
            "0",
            |p, _| p.s1.as_ref().map(|x| x.lost as f64),
            0,
        ),
        (
            "S1".into(),
            "service CPU cores",
            "",
            |p, _| p.s1.as_ref().map(|x| x.peer_cpu_cores),
            2,
        ),
        (
            format!("S2 throughput, {s2_streams} streams"),
            "highest rate held, vectors/s",
            "≥ 20,000",
            |p, _| p.s2.as_ref().and_then(|x| x.max_held_rate),
            0,
        ),
        (
            "S2".into(),
            "predictions/s at it",
            "",
            |p, _| p.s2.as_ref().and_then(|x| x.max_held_throughput),
            0,
        ),
        (
            "S2".into(),
            "model inferences/s at it",
            "≥ 60,000",
            |p, _| p.s2.as_ref().and_then(|x| x.max_held_model_inferences),
            0,
        ),
        (
            "S2".into(),
            "model inferences per core-second at it",
            "",
            |p, _| p.s2.as_ref().and_then(|x| x.max_held_inferences_per_core_s),
            0,
        ),
        (
            "S2".into(),
            "p99 ms at it",
            "≤ 10",
            |p, _| p.s2.as_ref().and_then(|x| x.max_held_p99_ms),
            3,
        ),
        (
            format!("S3 memory, {s2_streams} streams × members"),
            "RSS after warm-up, MB",
            "≤ 250",
            |p, _| p.s3.as_ref().map(|x| x.rss_after_warmup_mb),
            0,
        ),
        (
            "S3".into(),
            "peak RSS, MB",
            "",
            |p, _| p.s3.as_ref().map(|x| x.peak_rss_mb),
            0,
        ),
        (
            "S4 start-up".into(),
            "start → ready ms (median)",
            "≤ 250",
            |p, _| p.s4.as_ref().map(|x| x.median_ms),
            0,
        ),
        (
            "S4".into(),
            "start → ready ms (max)",
            "",
            |p, _| p.s4.as_ref().map(|x| x.max_ms),
            0,
        ),
    ];
    let _ = floor_ms;
    for (scenario, measure, target, get, digits) in rows {
        let a = aug.and_then(|p| get(p, r));
        let b = base.and_then(|p| get(p, r));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {scenario} | {measure} | {target} | {} | {} | {ratio} | {} |",
            fmt(a, digits),
            fmt(b, digits),
            meets(target, a)
        );
    }
    if let Some(h) = &r.http {
        s.push_str(&http_markdown(h));
    }
    for p in &r.peers {
        if let Some(m) = &p.s3
            && !m.at_idle.is_empty()
        {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "S3 resident memory of {} by part (/proc/PID/smaps), MB: just after ready ({:.0} MB), after the warm-up ({:.0} MB):",
                p.peer, m.rss_at_idle_mb, m.rss_after_warmup_mb
            );
            let _ = writeln!(s);
            let _ = writeln!(s, "| part | at idle | after warm-up |");
            let _ = writeln!(s, "|---|---:|---:|");
            let warm = |part: &str| m.after_warmup.iter().find(|x| x.part == part).map(|x| x.rss_mb);
            for x in &m.at_idle {
                let _ = writeln!(s, "| {} | {:.1} | {} |", x.part, x.rss_mb, fmt(warm(&x.part), 1));
            }
            for x in m
                .after_warmup
                .iter()
                .filter(|x| !m.at_idle.iter().any(|y| y.part == x.part))
            {
                let _ = writeln!(s, "| {} | - | {:.1} |", x.part, x.rss_mb);
            }
        }
    }
    for p in &r.peers {
        if let Some(t) = &p.s2 {
            let _ = writeln!(s);
            let _ = writeln!(s, "S2 steps, {} ({} streams):", p.peer, t.streams);
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| rate /s | attempt | sent /s | predictions/s | lost | p50 ms | p99 ms | p99.9 ms | max ms | service cores | nats cores | bench cores | mean batch | held |"
            );
            let _ = writeln!(
                s,
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
            );
            for x in &t.steps {
                let _ = writeln!(
                    s,
                    "| {:.0} | {} | {:.0} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | {} | {} |",
                    x.target_rate,
                    x.attempt,
                    x.sent_rate,
                    x.throughput,
                    x.lost,
                    x.latency.p50_ms,
                    x.latency.p99_ms,
                    x.latency.p999_ms,
                    x.latency.max_ms,
                    x.peer_cpu_cores,
                    x.nats_cpu_cores,
                    x.bench_cpu_cores,
                    x.service
                        .as_ref()
                        .map_or("-".into(), |c| format!("{:.1}", c.mean_batch_rows)),
                    if x.held { "yes" } else { "no" }
                );
            }
        }
        for e in &p.errors {
            let _ = writeln!(s, "\n{} error: {e}", p.peer);
        }
    }
    for p in &r.peers {
        if let Some(w) = &p.swap {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "### {} swapped from version 1 to 2 (loaded) and back to 1 (idle) under S1's load ({})",
                w.model, p.peer
            );
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| phase | sent | received | lost | duplicates | incomplete | p50 ms | p99 ms | max ms |"
            );
            let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
            for (name, ph) in [
                ("steady", &w.steady),
                ("with the swap", &w.with_swap),
                ("with the swap back", &w.with_swap_back),
            ] {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                    ph.sent,
                    ph.received,
                    ph.lost,
                    ph.duplicates,
                    ph.incomplete,
                    ph.latency.p50_ms,
                    ph.latency.p99_ms,
                    ph.latency.max_ms
                );
            }
            let _ = writeln!(
                s,
                "| around the swap (1 s before the load to 2 s after) | - | {} | - | - | {} | {:.2} | {:.2} | {:.2} |",
                w.window_received, w.window_incomplete, w.window.p50_ms, w.window.p99_ms, w.window.max_ms
            );
            let _ = writeln!(
                s,
                "| around the swap back (same window) | - | {} | - | - | {} | {:.2} | {:.2} | {:.2} |",
                w.back_window_received,
                w.back_window_incomplete,
                w.back_window.p50_ms,
                w.back_window.p99_ms,
                w.back_window.max_ms
            );
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "The load (checks, self-test, warm-up, swap) took {:.0} ms; the swap back to the idle version {:.1} ms. p99 with the swap / steady: {:.2}; with the swap back / steady: {:.2}.",
                w.load_ms,
                w.back_ms,
                w.with_swap.latency.p99_ms / w.steady.latency.p99_ms.max(1e-9),
                w.with_swap_back.latency.p99_ms / w.steady.latency.p99_ms.max(1e-9)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_is_a_utc_date() {
        let s = stamp();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
    }

    #[test]
    fn scenarios_parse() {
        assert_eq!(Scenario::parse("S2"), Some(Scenario::S2));
        assert_eq!(Scenario::parse("s5"), Some(Scenario::Http));
        assert_eq!(Scenario::parse("http"), Some(Scenario::Http));
        assert_eq!(Scenario::parse("s6"), None);
        assert_eq!(PeerKind::parse("python"), Some(PeerKind::PythonAsyncio));
    }
}

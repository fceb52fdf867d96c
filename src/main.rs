//! The `augur` binary: a thin command line over the library.
#![forbid(unsafe_code)]
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use augur_runtime::{DeviceSpec, Manifest, Model};
use augur_service::config::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "augur",
    version,
    about = "Real-time inference stream processor for trading signals"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: NATS in, models, ensemble, NATS out. Stops cleanly on SIGINT/SIGTERM.
    Serve {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        /// Print a status line (rates, latency, last prediction) every this many ms; 0: never.
        #[arg(long, default_value_t = 0)]
        status_ms: u64,
    },
    /// Run the same actor graph over a file of length-delimited FeatureVectorBatch messages;
    /// write the predictions as JSON lines, sorted by (symbol, timeframe, sequence).
    Replay {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long, default_value = "models/data/replay/ta-v1.pb")]
        input: PathBuf,
        /// "-" for stdout.
        #[arg(long, default_value = "-")]
        output: String,
        /// A plain OHLCV file instead of --input: CSV (.gz too) or Parquet (.parquet, .pq), with
        /// open, high, low, close, volume columns and optional symbol and time columns;
        /// ta-v1 is computed from it by the feed's code (docs/QUALITY.md).
        #[arg(long, conflicts_with = "input")]
        ohlcv: Option<PathBuf>,
        /// The timeframe of the --ohlcv bars.
        #[arg(long, default_value = "1d", requires = "ohlcv")]
        timeframe: String,
        /// The symbol of --ohlcv bars in a file without a symbol column (default: the file's
        /// name up to its first dot).
        #[arg(long, requires = "ohlcv")]
        symbol: Option<String>,
        /// Also write every scored signal, for a backtest (pandas, polars): CSV, or Parquet when
        /// the name ends in .parquet or .pq. One row per prediction whose horizon bar is in
        /// the input, with its ensemble and member probabilities, the realized label and
        /// return (docs/QUALITY.md). The per-model quality table goes to stderr.
        #[arg(long)]
        signals: Option<PathBuf>,
        /// Also draw a reliability diagram and a rolling-accuracy chart per model (and the
        /// ensemble) as PNGs into this directory.
        #[arg(long)]
        charts: Option<PathBuf>,
        /// Outcomes in the rolling-accuracy window of --charts.
        #[arg(long, default_value_t = 250)]
        rolling_window: usize,
    },
    /// Publish the committed real series to NATS (re-stamped, interleaved across streams).
    Publish {
        #[arg(long, default_value = "models/data/replay/ta-v1.pb")]
        input: PathBuf,
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[arg(long, default_value = "features")]
        prefix: String,
        /// Vectors per second; 0: as fast as possible.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Stop after this many vectors; 0: one pass (or forever with --repeat).
        #[arg(long, default_value_t = 0)]
        count: u64,
        #[arg(long)]
        repeat: bool,
    },
    /// Compute ta-v1 from the committed real OHLCV data and publish it for N symbols x
    /// timeframes (NATS and/or Kafka), at a rate, with a progress line.
    Feed {
        #[arg(long, default_value = "models/data")]
        data: PathBuf,
        /// NATS URL (omit for none).
        #[arg(long)]
        nats: Option<String>,
        #[arg(long, default_value = "features")]
        prefix: String,
        /// Kafka bootstrap servers (omit for none).
        #[arg(long)]
        kafka: Option<String>,
        #[arg(long, default_value = "ml-feature-vectors")]
        topic: String,
        #[arg(long, default_value_t = 10)]
        symbols: usize,
        #[arg(long, default_value = "1m,5m,15m,1h,4h,1d", value_delimiter = ',')]
        timeframes: Vec<String>,
        /// Vectors per second over all streams; 0: as fast as possible.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Stop after this many vectors; 0: no limit.
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Stop after this many seconds; 0: no limit.
        #[arg(long, default_value_t = 0.0)]
        seconds: f64,
    },
    /// The benchmark harness: floor, then scenarios S1-S4 for Augur and the Python asyncio
    /// baseline, each peer its own process on a fresh nats-server; a table and JSON under --out.
    Bench {
        /// Comma-separated: augur, python.
        #[arg(long, default_value = "augur,python", value_delimiter = ',')]
        peers: Vec<String>,
        /// Comma-separated: s1, s2, s3, s4, s5 (HTTP infer against Ray Serve), swap.
        #[arg(long, default_value = "s1,s2,s3,s4,s5", value_delimiter = ',')]
        scenarios: Vec<String>,
        /// The repository root (models/, config.toml).
        #[arg(long, default_value = ".")]
        root: PathBuf,
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        /// cpu or cuda[:N]: where the torch members run (both peers).
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// The Python that runs the baseline peer (with torch, xgboost, nats-py, protobuf).
        #[arg(long, default_value = ".venv/bin/python")]
        python: PathBuf,
        #[arg(long, default_value_t = 20.0)]
        s1_seconds: f64,
        #[arg(long, default_value_t = 1000.0)]
        s1_rate: f64,
        #[arg(long, default_value_t = 10)]
        s1_symbols: usize,
        #[arg(long, default_value_t = 100)]
        s2_symbols: usize,
        /// S2's rate steps, vectors/s.
        #[arg(long, value_delimiter = ',')]
        s2_rates: Option<Vec<f64>>,
        #[arg(long, default_value_t = 6.0)]
        s2_step_seconds: f64,
        #[arg(long, default_value_t = 3)]
        s4_starts: usize,
        /// S5: the model Augur and Ray Serve both serve over HTTP.
        #[arg(long, default_value = "lstm-direction")]
        http_model: String,
        /// S5: closed-loop clients, comma-separated.
        #[arg(long, default_value = "1,16", value_delimiter = ',')]
        http_concurrency: Vec<usize>,
        /// S5: measured seconds per (server, concurrency).
        #[arg(long, default_value_t = 10.0)]
        http_seconds: f64,
        /// S5: Ray Serve's ingress modes, comma-separated (proxy: its default; haproxy: its
        /// high-throughput mode).
        #[arg(long, default_value = "proxy,haproxy", value_delimiter = ',')]
        http_ray_ingress: Vec<String>,
        /// A short smoke run: few seconds per scenario, small S2.
        #[arg(long)]
        quick: bool,
    },
    /// Latency and throughput of the Open Inference Protocol's infer against a running service,
    /// over HTTP (binary data) and gRPC, closed-loop at each concurrency (scripts/bench-oip.sh
    /// starts the service and writes the report).
    BenchOip {
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        #[arg(long, default_value = "127.0.0.1:8001")]
        grpc: String,
        /// The bearer token or API key, if the service needs one.
        #[arg(long, default_value = "")]
        token: String,
        #[arg(long, value_delimiter = ',', default_value = "augur-ensemble,lstm-direction")]
        models: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        concurrency: Vec<usize>,
        /// Measured seconds per cell (after one second of warm-up).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Write the table (.md) and the figures (.json) under this path prefix.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make a new API key for a tenant (`[access].keys_file`): prints the key (give it to the
    /// tenant; it is not stored) and the line of its SHA-256 for the keys file.
    Key,
    /// Operate a running service over its HTTP API (plain HTTP): the repository (index, load,
    /// unload, a version), experiments (A/B split, shadow, canary; promote, stop). Prints the
    /// answer's JSON; exits 1 on a refusal, with its reasons.
    Ctl {
        /// The service's `[http].bind`.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// The operator's `[http].token`.
        #[arg(long, env = "AUGUR_HTTP__TOKEN", default_value = "", hide_env_values = true)]
        token: String,
        #[command(subcommand)]
        action: Ctl,
    },
    /// Load every model of a model repository, check it, and print what was loaded.
    Models {
        #[arg(long, default_value = "models")]
        root: PathBuf,
        /// cpu, cuda, cuda:N or auto
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

#[derive(Subcommand)]
enum Ctl {
    /// Every model: the version serving, its state, the other versions on disk and why.
    Index,
    /// Every model's gate (`GET /api/v1/models`).
    Models,
    /// Put a member in serving; with --version, load that version and swap it in.
    Load {
        model: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Take a member out of serving; with --version, free that idle version instead.
    Unload {
        model: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Running experiments and the recent decisions.
    Experiments,
    /// Start an experiment on a member (replaces a running one).
    Experiment {
        model: String,
        /// The candidate version (a complete folder of the repository).
        #[arg(long)]
        candidate: String,
        /// split, shadow or canary.
        #[arg(long, default_value = "shadow")]
        mode: String,
        /// Share of streams, percent (split, shadow).
        #[arg(long, default_value_t = 100.0)]
        weight_pct: f64,
        /// A canary's policy as JSON, e.g. '{"step_weight_pct":10,"max_weight_pct":50,"interval_s":300}'.
        #[arg(long, default_value = "{}")]
        canary: String,
    },
    /// Promote a member's candidate by hand.
    Promote { model: String },
    /// Stop a member's experiment (its candidate is freed).
    Stop { model: String },
}

/// One call of `augur ctl`: the method, the path and the body.
fn ctl_request(action: &Ctl) -> anyhow::Result<(&'static str, String, String)> {
    Ok(match action {
        Ctl::Index => ("POST", "/v2/repository/index".into(), String::new()),
        Ctl::Models => ("GET", "/api/v1/models".into(), String::new()),
        Ctl::Load { model, version } => (
            "POST",
            format!("/v2/repository/models/{model}/load"),
            match version {
                Some(v) => serde_json::json!({"parameters": {"version": v}}).to_string(),
                None => String::new(),
            },
        ),
        Ctl::Unload { model, version } => (
            "POST",
            format!("/v2/repository/models/{model}/unload"),
            match version {
                Some(v) => serde_json::json!({"parameters": {"version": v}}).to_string(),
                None => String::new(),
            },
        ),
        Ctl::Experiments => ("GET", "/api/v1/experiments".into(), String::new()),
        Ctl::Experiment {
            model,
            candidate,
            mode,
            weight_pct,
            canary,
        } => {
            let canary: serde_json::Value =
                serde_json::from_str(canary).context("--canary must be a JSON object")?;
            (
                "PUT",
                format!("/api/v1/experiments/{model}"),
                serde_json::json!({"candidate": candidate, "mode": mode, "weight_pct": weight_pct, "canary": canary})
                    .to_string(),
            )
        }
        Ctl::Promote { model } => (
            "POST",
            format!("/api/v1/experiments/{model}/promote"),
            String::new(),
        ),
        Ctl::Stop { model } => ("DELETE", format!("/api/v1/experiments/{model}"), String::new()),
    })
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Cli::parse().command) {
        eprintln!("augur: {e:#}");
        std::process::exit(1);
    }
}

/// Past the shutdown budget, the stages get this long to finish before the process exits.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Exits the process if it is still running `after` from now.
fn watchdog(after: Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(after);
            tracing::error!(
                after_ms = after.as_millis() as u64,
                "shutdown did not finish within its budget; exiting"
            );
            std::process::exit(4);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "no shutdown watchdog");
    }
}

/// Runs `job` on a current-thread runtime; its stop flag turns true on SIGINT or SIGTERM.
fn until_signal<F, Fut, T>(job: F) -> anyhow::Result<T>
where
    F: FnOnce(tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            augur_service::service::shutdown_signal().await;
            let _ = tx.send(true);
        });
        job(rx).await
    })
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config, status_ms } => {
            let cfg = Config::load(Some(&config))?;
            let every = (status_ms > 0).then(|| Duration::from_millis(status_ms));
            let budget = Duration::from_millis(cfg.service.shutdown_timeout_ms);
            // The budget bounds the exit whatever the brokers do: a client library's teardown
            // (librdkafka's close, a blocking flush) must not keep the process (and its port)
            // alive after the stages have run out of time.
            let signal = async move {
                augur_service::service::shutdown_signal().await;
                watchdog(budget + SHUTDOWN_GRACE);
            };
            let report =
                actix_rt::System::new().block_on(augur_service::service::serve(cfg, signal, every, None))?;
            // Everything was flushed and committed within the budget; skip the clients'
            // teardown, which can block on a broker that is gone.
            std::process::exit(if report.drained { 0 } else { 3 });
        }
        Command::Replay {
            config,
            input,
            ohlcv,
            timeframe,
            symbol,
            output,
            signals,
            charts,
            rolling_window,
        } => {
            let cfg = Config::load(Some(&config))?;
            let bytes = match &ohlcv {
                Some(path) => {
                    anyhow::ensure!(
                        cfg.validation.timeframes.contains(&timeframe),
                        "--timeframe {timeframe:?} is not one the service takes (validation.timeframes: {})",
                        cfg.validation.timeframes.join(", ")
                    );
                    let bars = augur_tools::ohlcv::read(path, symbol.as_deref())?;
                    for w in augur_tools::ohlcv::warnings(&bars, &timeframe) {
                        eprintln!("warning: {w}");
                    }
                    eprintln!(
                        "replay: {} bars of {} symbol(s) from {}",
                        bars.iter().map(|b| b.rows.len()).sum::<usize>(),
                        bars.len(),
                        path.display()
                    );
                    augur_tools::ohlcv::feature_stream(&bars, &timeframe)?
                }
                None => std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?,
            };
            let out = actix_rt::System::new().block_on(augur_service::service::replay(&cfg, &bytes))?;
            for r in out.rejects.iter().take(20) {
                eprintln!("rejected: {r}");
            }
            if out.rejects.len() > 20 {
                eprintln!("rejected: ... and {} more", out.rejects.len() - 20);
            }
            anyhow::ensure!(
                !out.predictions.is_empty() || out.rejects.is_empty(),
                "no prediction: every one of the {} messages was rejected (first: {})",
                out.rejects.len(),
                out.rejects.first().map(String::as_str).unwrap_or_default()
            );
            let mut w: Box<dyn Write> = if output == "-" {
                Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
            } else {
                Box::new(std::io::BufWriter::new(
                    std::fs::File::create(&output).with_context(|| format!("creating {output}"))?,
                ))
            };
            for p in &out.predictions {
                serde_json::to_writer(&mut w, p.as_ref())?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
            eprintln!(
                "replay: {} predictions, {} rejected",
                out.predictions.len(),
                out.rejects.len()
            );
            if signals.is_some() || charts.is_some() {
                let board = out
                    .quality
                    .as_ref()
                    .context("--signals and --charts need outcomes.enabled = true")?;
                let scored = augur_tools::signals::Signals::new(&out.predictions, &board.recorded());
                if let Some(path) = &signals {
                    scored.write(path)?;
                    eprintln!(
                        "replay: {} scored signals written to {}",
                        scored.rows.len(),
                        path.display()
                    );
                }
                if let Some(dir) = &charts {
                    let mut refs = std::collections::BTreeMap::new();
                    for r in board.report() {
                        refs.insert(
                            r.model.clone(),
                            augur_tools::charts::Reference {
                                test_accuracy: r.reference.test_accuracy,
                                baseline_accuracy: r.reference.baseline_accuracy,
                            },
                        );
                    }
                    let files = augur_tools::charts::draw(dir, &scored, &refs, rolling_window)?;
                    let pngs = files
                        .iter()
                        .filter(|f| f.extension().is_some_and(|x| x == "png"))
                        .count();
                    eprintln!(
                        "replay: {pngs} charts drawn into {} (their numbers: reliability.csv, rolling-accuracy.csv)",
                        dir.display()
                    );
                }
                eprintln!(
                    "model\tversion\ttimeframe\toutcomes\taccuracy\tlog_loss\tbrier\thit_rate\ttest_accuracy\tbaseline_accuracy"
                );
                let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
                for r in board.report() {
                    eprintln!(
                        "{}\t{}\t{}\t{}\t{:.4}\t{:.4}\t{:.4}\t{}\t{}\t{}",
                        r.model,
                        r.version,
                        r.timeframe,
                        r.total.outcomes,
                        r.total.accuracy,
                        r.total.log_loss,
                        r.total.brier,
                        f(r.total.hit_rate),
                        f(r.reference.test_accuracy),
                        f(r.reference.baseline_accuracy)
                    );
                }
                let forecasts = board.forecast_report();
                if !forecasts.is_empty() {
                    eprintln!(
                        "model\tversion\ttimeframe\thorizon\tforecasts\tmae\tmae_zero\tskill\tcoverage"
                    );
                    for r in forecasts {
                        eprintln!(
                            "{}\t{}\t{}\t{}\t{}\t{:.6}\t{:.6}\t{}\t{:.4}",
                            r.model,
                            r.version,
                            r.timeframe,
                            r.horizon_bars,
                            r.total.count,
                            r.total.mae,
                            r.total.mae_zero,
                            f(r.total.skill),
                            r.total.coverage
                        );
                    }
                }
            }
        }
        Command::Publish {
            input,
            url,
            prefix,
            rate,
            count,
            repeat,
        } => {
            let bytes = std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let o = augur_tools::publish::PublishOptions {
                url,
                prefix,
                rate,
                count,
                repeat,
            };
            let sent = until_signal(|stop| async move { augur_tools::publish::run(&bytes, &o, stop).await })?;
            eprintln!("publish: {sent} vectors sent");
        }
        Command::Feed {
            data,
            nats,
            prefix,
            kafka,
            topic,
            symbols,
            timeframes,
            rate,
            count,
            seconds,
        } => {
            let o = augur_tools::feed::FeedOptions {
                nats_url: nats,
                nats_prefix: prefix,
                kafka_brokers: kafka,
                kafka_topic: topic,
                symbols,
                timeframes,
                rate,
                count,
                duration: (seconds > 0.0).then(|| Duration::from_secs_f64(seconds)),
            };
            let sent = until_signal(|stop| async move { augur_tools::feed::run(&data, &o, stop).await })?;
            eprintln!("feed: {sent} vectors sent");
        }
        Command::Bench {
            peers,
            scenarios,
            root,
            config,
            device,
            out,
            python,
            s1_seconds,
            s1_rate,
            s1_symbols,
            s2_symbols,
            s2_rates,
            s2_step_seconds,
            s4_starts,
            http_model,
            http_concurrency,
            http_seconds,
            http_ray_ingress,
            quick,
        } => {
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let mut o = augur_tools::bench::BenchOptions::new(&root);
            o.config = config;
            o.device = device;
            o.out = out;
            o.python = python;
            o.s1_seconds = s1_seconds;
            o.s1_rate = s1_rate;
            o.s1_symbols = s1_symbols;
            o.s2_symbols = s2_symbols;
            o.s2_step_seconds = s2_step_seconds;
            o.s4_starts = s4_starts;
            o.http_model = http_model;
            o.http_concurrency = http_concurrency;
            o.http_seconds = http_seconds;
            o.http_ray_ingress = http_ray_ingress;
            if let Some(r) = s2_rates {
                o.s2_rates = r;
            }
            if quick {
                o.s1_seconds = o.s1_seconds.min(3.0);
                o.s2_symbols = o.s2_symbols.min(10);
                o.s2_rates.truncate(2);
                o.s2_step_seconds = o.s2_step_seconds.min(2.0);
                o.s4_starts = 1;
                o.floor_seconds = 0.2;
                o.http_seconds = o.http_seconds.min(2.0);
                // Ray Serve's default mode only: haproxy's fixed ports allow one per machine.
                o.http_ray_ingress.retain(|m| m == "proxy");
            }
            o.peers = peers
                .iter()
                .map(|p| {
                    augur_tools::bench::peer::PeerKind::parse(p)
                        .with_context(|| format!("unknown peer {p:?} (augur, python)"))
                })
                .collect::<anyhow::Result<_>>()?;
            o.scenarios = scenarios
                .iter()
                .map(|s| {
                    augur_tools::bench::Scenario::parse(s)
                        .with_context(|| format!("unknown scenario {s:?} (s1-s5, swap)"))
                })
                .collect::<anyhow::Result<_>>()?;
            let report =
                until_signal(|stop| async move { augur_tools::bench::run(&o, stop, command).await })?;
            let failed: Vec<String> = report
                .peers
                .iter()
                .flat_map(|p| p.errors.iter().map(move |e| format!("{}: {e}", p.peer)))
                .chain(
                    report
                        .http
                        .iter()
                        .flat_map(|h| h.errors.iter().map(|e| format!("s5: {e}"))),
                )
                .collect();
            anyhow::ensure!(failed.is_empty(), "scenarios failed: {}", failed.join("; "));
        }
        Command::BenchOip {
            http,
            grpc,
            token,
            models,
            concurrency,
            seconds,
            out,
        } => {
            use augur_tools::bench::oip;
            let o = oip::OipBench {
                http: http.clone(),
                grpc,
                token,
                models: models.clone(),
                concurrency,
                seconds,
                warmup_seconds: 1.0,
                transports: vec!["http", "grpc"],
            };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let cells = rt.block_on(async {
                let mut shapes = std::collections::HashMap::new();
                for m in &models {
                    shapes.insert(m.clone(), oip::input_shape(&http, m).await?);
                }
                oip::run(&o, |m| {
                    let &(t, f) = shapes.get(m).context("no shape")?;
                    Ok((oip::replay_window(std::path::Path::new("."), t, f)?, t, f))
                })
                .await
            })?;
            let table = oip::markdown(&cells);
            println!("{table}");
            if let Some(out) = out {
                std::fs::write(out.with_extension("md"), &table)?;
                std::fs::write(out.with_extension("json"), serde_json::to_string_pretty(&cells)?)?;
            }
        }
        Command::Ctl { addr, token, action } => {
            let (method, path, body) = ctl_request(&action)?;
            let (code, answer) =
                augur_tools::bench::peer::http_request(&addr, method, &path, Some(&token), &body)?;
            let pretty = serde_json::from_str::<serde_json::Value>(&answer)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or(answer);
            if (200..300).contains(&code) {
                println!("{pretty}");
            } else {
                anyhow::bail!("{method} {path}: HTTP {code}\n{pretty}");
            }
        }
        Command::Key => {
            use std::io::Read;
            let mut raw = [0u8; 24];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut raw))
                .context("reading /dev/urandom")?;
            let key = format!(
                "augur_{}",
                raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            println!("key:  {key}");
            println!("keys = [\"{}\"]", augur_service::tenants::hash_line(&key));
        }
        Command::Models { root, device } => {
            let spec = DeviceSpec::parse(&device).with_context(|| format!("unknown device {device:?}"))?;
            println!("cuda available: {}", augur_runtime::cuda::available());
            for dir in Manifest::discover(&root).context("listing the model repository")? {
                let m = Model::load(&dir, spec).with_context(|| format!("loading {}", dir.display()))?;
                let man = m.manifest();
                println!(
                    "{:<16} v{} {:<8} {:<8} window {:>2} x {:>2} {:<9} test accuracy {} (baseline {})",
                    man.id,
                    man.version,
                    man.family,
                    m.device_name(),
                    man.window,
                    man.features,
                    format!("{:?}", man.layout),
                    man.metrics
                        .get("test_accuracy")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    man.metrics
                        .get("baseline_accuracy")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                );
            }
        }
    }
    Ok(())
}

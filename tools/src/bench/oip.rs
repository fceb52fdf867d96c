//! Latency and throughput of the Open Inference Protocol's `infer` against a running service:
//! closed-loop clients (each sends its next request when the last is answered) at each
//! concurrency, over HTTP (the binary-data extension, as tritonclient sends by default, on
//! keep-alive connections) and gRPC (raw contents, one HTTP/2 connection per client), on one
//! real window of the committed series. `augur bench-oip`; scripts/bench-oip.sh starts the
//! service and writes the report.
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use augur_service::grpc::pb;
use augur_service::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One measured cell: a model, a transport, a concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub model: String,
    pub transport: &'static str,
    pub concurrency: usize,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// A keep-alive HTTP/1.1 connection that posts one body and reads one answer.
struct HttpConn {
    r: BufReader<TcpStream>,
}

impl HttpConn {
    async fn connect(addr: &str) -> anyhow::Result<HttpConn> {
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        Ok(HttpConn { r: BufReader::new(s) })
    }

    /// Posts `body` with `header_len` (the binary-data extension's JSON length); the status.
    async fn post(&mut self, path: &str, body: &[u8], header_len: usize, token: &str) -> anyhow::Result<u16> {
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {token}\r\n")
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: augur\r\nContent-Length: {}\r\nInference-Header-Content-Length: {header_len}\r\n{auth}\r\n",
            body.len()
        );
        let s = self.r.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            if self.r.read_line(&mut line).await? == 0 {
                bail!("the connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().context("content-length")?;
            }
        }
        let mut sink = vec![0u8; len];
        self.r.read_exact(&mut sink).await?;
        Ok(status)
    }
}

/// The request bodies for `model`: the binary-data HTTP body (and its JSON length), and the
/// gRPC request. `window` is `t` vectors of `f` values.
fn requests(model: &str, window: &[f32], t: usize, f: usize) -> (Vec<u8>, usize, pb::ModelInferRequest) {
    let raw: Vec<u8> = window.iter().flat_map(|x| x.to_le_bytes()).collect();
    let head = serde_json::json!({
        "inputs": [{"name": "window", "shape": [1, t, f], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
        "parameters": {"binary_data_output": true},
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&raw);
    let grpc = pb::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "window".into(),
            datatype: "FP32".into(),
            shape: vec![1, t as i64, f as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    };
    (body, head.len(), grpc)
}

fn cell(
    model: &str,
    transport: &'static str,
    c: usize,
    hist: &Histogram<u64>,
    errors: u64,
    took: f64,
) -> Cell {
    let n = hist.len();
    Cell {
        model: model.to_string(),
        transport,
        concurrency: c,
        requests: n,
        errors,
        seconds: took,
        requests_per_s: n as f64 / took.max(1e-9),
        p50_us: hist.value_at_quantile(0.5),
        p90_us: hist.value_at_quantile(0.9),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
    }
}

/// The input shape `[-1, t, f]` of `model`, from its metadata (`GET /v2/models/{model}`).
pub async fn input_shape(http: &str, model: &str) -> anyhow::Result<(usize, usize)> {
    let mut s = TcpStream::connect(http)
        .await
        .with_context(|| format!("connecting to {http}"))?;
    s.write_all(
        format!("GET /v2/models/{model} HTTP/1.1\r\nHost: augur\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the headers")?;
    let v: serde_json::Value = serde_json::from_slice(&raw[at + 4..]).context("the metadata is not JSON")?;
    let shape = &v["inputs"][0]["shape"];
    match (shape[1].as_u64(), shape[2].as_u64()) {
        (Some(t), Some(f)) => Ok((t as usize, f as usize)),
        _ => bail!("{model}: no [-1, t, f] input in {v}"),
    }
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct OipBench {
    pub http: String,
    pub grpc: String,
    pub token: String,
    pub models: Vec<String>,
    pub concurrency: Vec<usize>,
    pub seconds: f64,
    pub warmup_seconds: f64,
    /// "http", "grpc": the transports measured, in this order.
    pub transports: Vec<&'static str>,
}

/// The last `t` vectors of AAPL 1d in the committed replay series (`models/data/replay`),
/// `f` values each: the one real window every benchmark call sends.
pub fn replay_window(root: &std::path::Path, t: usize, f: usize) -> anyhow::Result<Vec<f32>> {
    let path = root.join("models/data/replay/ta-v1.pb");
    let file = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let vectors: Vec<Vec<f32>> = crate::publish::interleave(&file)?
        .into_iter()
        .filter(|v| v.symbol == "AAPL" && v.timeframe == "1d")
        .map(|v| v.values)
        .collect();
    anyhow::ensure!(
        vectors.len() >= t,
        "{} AAPL vectors, the model needs {t}",
        vectors.len()
    );
    let w: Vec<f32> = vectors[vectors.len() - t..].iter().flatten().copied().collect();
    anyhow::ensure!(w.len() == t * f, "the vectors are not {f} wide");
    Ok(w)
}

/// Runs every (model, transport, concurrency) cell in turn; `window_of(model)` gives the
/// model's input window and its (t, f).
pub async fn run(
    o: &OipBench,
    window_of: impl Fn(&str) -> anyhow::Result<(Vec<f32>, usize, usize)>,
) -> anyhow::Result<Vec<Cell>> {
    let mut cells = Vec::new();
    for model in &o.models {
        let (w, t, f) = window_of(model)?;
        let (body, head_len, grpc_req) = requests(model, &w, t, f);
        let path = format!("/v2/models/{model}/infer");
        for &c in &o.concurrency {
            for &transport in &o.transports {
                let mut tasks = Vec::new();
                let start = Instant::now();
                let warm_until = start + Duration::from_secs_f64(o.warmup_seconds);
                let end = warm_until + Duration::from_secs_f64(o.seconds);
                for _ in 0..c {
                    let (body, path, grpc_req, o) = (body.clone(), path.clone(), grpc_req.clone(), o.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                        let mut errors = 0u64;
                        if transport == "http" {
                            let mut conn = HttpConn::connect(&o.http).await?;
                            while Instant::now() < end {
                                let t0 = Instant::now();
                                // A server that stops answering ends the cell with an error
                                // instead of hanging the bench.
                                let ok = tokio::time::timeout(
                                    Duration::from_secs(30),
                                    conn.post(&path, &body, head_len, &o.token),
                                )
                                .await
                                .context("no answer within 30 s")??
                                    == 200;
                                if t0 >= warm_until {
                                    if ok {
                                        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
                                    } else {
                                        errors += 1;
                                    }
                                }
                            }
                        } else {
                            let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", o.grpc))?
                                .tcp_nodelay(true)
                                .connect()
                                .await?;
                            let mut client = GrpcInferenceServiceClient::new(ch);
                            let auth: Option<tonic::metadata::MetadataValue<_>> = (!o.token.is_empty())
                                .then(|| format!("Bearer {}", o.token).parse())
                                .transpose()?;
                            while Instant::now() < end {
                                let mut req = tonic::Request::new(grpc_req.clone());
                                if let Some(a) = &auth {
                                    req.metadata_mut().insert("authorization", a.clone());
                                }
                                let t0 = Instant::now();
                                let ok = client.model_infer(req).await.is_ok();
                                if t0 >= warm_until {
                                    if ok {
                                        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
                                    } else {
                                        errors += 1;
                                    }
                                }
                            }
                        }
                        anyhow::Ok((hist, errors))
                    }));
                }
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut errors = 0;
                for t in tasks {
                    let (h, e) = t.await??;
                    hist.add(&h)?;
                    errors += e;
                }
                let c = cell(model, transport, c, &hist, errors, o.seconds);
                eprintln!(
                    "bench-oip: {:<16} {:<4} c={:<3} {:>8.0} req/s  p50 {:>6} us  p99 {:>6} us  errors {}",
                    c.model, c.transport, c.concurrency, c.requests_per_s, c.p50_us, c.p99_us, c.errors
                );
                cells.push(c);
            }
        }
    }
    Ok(cells)
}

/// The report as a Markdown table.
pub fn markdown(cells: &[Cell]) -> String {
    let mut s = String::from(
        "| model | transport | concurrency | requests/s | p50 µs | p90 µs | p99 µs | max µs | errors |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for c in cells {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |\n",
            c.model,
            c.transport,
            c.concurrency,
            c.requests_per_s,
            c.p50_us,
            c.p90_us,
            c.p99_us,
            c.max_us,
            c.errors
        ));
    }
    s
}

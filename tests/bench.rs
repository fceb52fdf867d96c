//! The benchmark harness and its baseline peer, against a real nats-server: the Python
//! asyncio peer computes what Augur computes (same models, manifests and contract), and a
//! quick `augur bench` run of both peers writes a report whose figures hold together.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use augur_service::pb;
use augur_tools::bench::peer::{Peer, PeerKind, PeerPaths};
use futures::StreamExt;
use prost::Message;

fn paths(dir: &std::path::Path) -> PeerPaths {
    let fds = dir.join("augur.fds");
    std::fs::write(&fds, augur_service::pb::DESCRIPTOR_SET).unwrap();
    PeerPaths {
        augur_bin: env!("CARGO_BIN_EXE_augur").into(),
        config: common::root().join("config.toml"),
        python: common::root().join(".venv/bin/python"),
        python_peer: common::root().join("bench/peers/python_asyncio/service.py"),
        models: common::root().join("models"),
        descriptor_set: fds,
        device: "cpu".into(),
        env: Vec::new(),
    }
}

#[test]
fn python_baseline_predicts_what_augur_replays() {
    let dir = tempfile::tempdir().unwrap();
    let nats = common::NatsServer::start();
    let peer = Peer::start(
        PeerKind::PythonAsyncio,
        &paths(dir.path()),
        &nats.url(),
        &dir.path().join("python.log"),
        Duration::from_secs(120),
    )
    .unwrap();
    // 50 vectors of each of 3 real streams: 19 predictions each once the 32-vector windows fill.
    let mut per: HashMap<String, usize> = HashMap::new();
    let vectors: Vec<pb::FeatureVector> = common::real_vectors()
        .into_iter()
        .filter(|v| ["AAPL", "IBM", "EURUSD"].contains(&v.symbol.as_str()))
        .filter(|v| {
            let n = per.entry(v.symbol.clone()).or_default();
            *n += 1;
            *n <= 50
        })
        .collect();
    assert_eq!(vectors.len(), 150);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got: Vec<pb::EnsemblePrediction> = rt.block_on(async {
        let c = async_nats::connect(nats.url()).await.unwrap();
        let mut sub = c.subscribe("predictions.>").await.unwrap();
        c.flush().await.unwrap();
        let (url, vs) = (nats.url(), vectors.clone());
        let publisher = std::thread::spawn(move || common::publish(&url, &vs, 2000.0));
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < 57 && Instant::now() < deadline {
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                got.push(pb::EnsemblePrediction::decode(m.payload).unwrap());
            }
        }
        publisher.join().unwrap();
        got
    });
    peer.stop(Duration::from_secs(10)).unwrap();
    assert_eq!(got.len(), 57, "3 streams x (50 - 31)");

    let mut file = Vec::new();
    for v in &vectors {
        pb::FeatureVectorBatch {
            vectors: vec![v.clone()],
        }
        .encode_length_delimited(&mut file)
        .unwrap();
    }
    let cfg = common::config(&nats.url());
    let out = actix_rt::System::new()
        .block_on(augur_service::service::replay(&cfg, &file))
        .unwrap();
    assert_eq!(out.predictions.len(), 57);
    let mut worst = 0f32;
    for r in &out.predictions {
        let p = got
            .iter()
            .find(|p| p.symbol == *r.symbol && p.timeframe == *r.timeframe && p.sequence == r.sequence)
            .unwrap_or_else(|| panic!("python gave no prediction for {} {}", r.symbol, r.sequence));
        assert_eq!(p.models_used, 3);
        assert_eq!(p.signal, r.direction.signal(), "{} {}", r.symbol, r.sequence);
        for (a, b) in r.probabilities.iter().zip(&p.probabilities) {
            worst = worst.max((a - b).abs());
        }
        for m in &r.members {
            let pm = p.members.iter().find(|x| x.model_id == *m.model_id).unwrap();
            for (a, b) in m.probabilities.iter().zip(&pm.probabilities) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    assert!(
        worst <= 1e-5,
        "python baseline vs augur replay: max |diff| {worst}"
    );
}

#[test]
fn quick_bench_of_both_peers_writes_a_consistent_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_augur"))
        .current_dir(common::root())
        .args(["bench", "--quick", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "augur bench failed:\n{stderr}");
    let md = std::fs::read_to_string(dir.path().join("latest.md")).unwrap();
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("latest.json")).unwrap()).unwrap();
    // The table shows what the JSON holds: S1 p99 of each peer and their ratio.
    let row = md
        .lines()
        .find(|l| l.starts_with("| S1 | p99 ms | ≤ 1.0 |"))
        .unwrap_or_else(|| panic!("no S1 p99 row:\n{md}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let p99_of = |peer: &str| {
        r["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer"] == peer)
            .unwrap()["s1"]["latency"]["p99_ms"]
            .as_f64()
            .unwrap()
    };
    let (aug, py) = (p99_of("augur"), p99_of("python_asyncio"));
    assert_eq!(cells[4], format!("{aug:.3}"), "{row}");
    assert_eq!(cells[5], format!("{py:.3}"), "{row}");
    let ratio: f64 = cells[6].parse().unwrap();
    assert!(
        (ratio - aug / py).abs() <= 0.01 + 0.01 * aug / py,
        "{row}: {}",
        aug / py
    );
    let floor = &r["floor"];
    assert_eq!(floor["members"].as_array().unwrap().len(), 3);
    let rtt = floor["nats_rtt_p50_us"].as_f64().unwrap();
    let serial = floor["serial_us"].as_f64().unwrap();
    let parallel = floor["parallel_us"].as_f64().unwrap();
    assert!(rtt > 0.0 && parallel > rtt && serial >= parallel, "{floor}");
    let peers = r["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    for p in peers {
        let name = p["peer"].as_str().unwrap();
        assert!(
            p["errors"].as_array().unwrap().is_empty(),
            "{name}: {}",
            p["errors"]
        );
        let s1 = &p["s1"];
        let sent = s1["sent"].as_u64().unwrap();
        assert!(sent > 1000, "{name} sent {sent}");
        assert_eq!(s1["lost"], 0, "{name}: {s1}");
        assert_eq!(s1["duplicates"], 0, "{name}: {s1}");
        assert_eq!(s1["received"].as_u64().unwrap(), sent, "{name}");
        let l = &s1["latency"];
        let (p50, p99, max) = (
            l["p50_ms"].as_f64().unwrap(),
            l["p99_ms"].as_f64().unwrap(),
            l["max_ms"].as_f64().unwrap(),
        );
        // End to end cannot beat the NATS round trip it contains.
        assert!(p50 * 1e3 >= rtt && p50 <= p99 && p99 <= max, "{name}: {l}");
        let steps = p["s2"]["steps"].as_array().unwrap();
        assert!(!steps.is_empty(), "{name}");
        assert_eq!(steps[0]["streams"], 60);
        // CPU efficiency at the highest step held: its inferences over the peer's CPU.
        if let Some(e) = p["s2"]["max_held_inferences_per_core_s"].as_f64() {
            let held = steps.iter().rev().find(|s| s["held"] == true).unwrap();
            let want = p["s2"]["max_held_model_inferences"].as_f64().unwrap()
                / held["peer_cpu_cores"].as_f64().unwrap();
            assert!(
                e > 0.0 && (e - want).abs() <= 1e-6 * want,
                "{name}: {e} vs {want}"
            );
        }
        assert!(p["s3"]["rss_after_warmup_mb"].as_f64().unwrap() > 10.0, "{name}");
        let s4 = p["s4"]["median_ms"].as_f64().unwrap();
        assert!(s4 > 0.0 && s4 < 60_000.0, "{name}: {s4}");
    }
    // Augur's own counters came through its /metrics.
    let aug = peers.iter().find(|p| p["peer"] == "augur").unwrap();
    let svc = &aug["s1"]["service"];
    assert!(svc["mean_batch_rows"].as_f64().unwrap() >= 1.0, "{svc}");
    // S3's memory by part adds up to about the resident memory measured with it.
    let s3 = &aug["s3"];
    let parts: f64 = s3["at_idle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rss_mb"].as_f64().unwrap())
        .sum();
    let idle = s3["rss_at_idle_mb"].as_f64().unwrap();
    assert!(
        (parts - idle).abs() < 0.05 * idle + 5.0,
        "{parts} MB of parts, {idle} MB resident: {s3}"
    );
    // S1's distribution holds every prediction received.
    let hist = aug["s1"]["latency"]["histogram"].as_array().unwrap();
    let counted: u64 = hist.iter().map(|b| b[1].as_u64().unwrap()).sum();
    assert_eq!(counted, aug["s1"]["received"].as_u64().unwrap());
    // S5: Augur and a real Ray Serve (its default ingress) answered every call of the same
    // client at both concurrencies, and the table compares them.
    let http = &r["http"];
    assert!(http["errors"].as_array().unwrap().is_empty(), "{http}");
    let servers = http["servers"].as_array().unwrap();
    let names: Vec<&str> = servers.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["augur", "ray_serve (proxy)"]);
    for v in servers {
        let cells = v["cells"].as_array().unwrap();
        let cs: Vec<u64> = cells.iter().map(|c| c["concurrency"].as_u64().unwrap()).collect();
        assert_eq!(cs, [1, 16], "{v}");
        for c in cells {
            assert!(c["requests"].as_u64().unwrap() > 0, "{c}");
            assert_eq!(c["errors"], 0, "{c}");
        }
    }
    assert!(
        md.lines().any(|l| l.starts_with("| ray_serve (proxy) | ")),
        "{md}"
    );
}

//! Operations against real servers: readiness follows nats-server, every dashboard panel's
//! query returns data from a real Prometheus scraping the service under load, and a config
//! PATCH under load takes effect for the following events with nothing lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use augur_service::pb;
use futures::StreamExt;
use prost::Message;

fn wait_status(addr: &str, path: &str, want: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if common::http(addr, "GET", path, &[], b"").0 == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn test_readiness_turns_503_when_nats_stops_and_200_when_it_is_back() {
    let mut nats = common::NatsServer::start();
    let svc = common::Service::start(common::config(&nats.url()));
    let addr = svc.http();
    assert!(wait_status(&addr, "/health/ready", 200, Duration::from_secs(10)));
    nats.stop();
    assert!(
        wait_status(&addr, "/health/ready", 503, Duration::from_secs(20)),
        "not ready without NATS"
    );
    let (_, body) = common::get_json(&addr, "/health/ready");
    assert!(body["reasons"].to_string().contains("nats"), "{body}");
    assert_eq!(common::get_json(&addr, "/api/v1/health").1["status"], "Degraded");
    assert_eq!(
        common::http(&addr, "GET", "/health/live", &[], b"").0,
        200,
        "still live"
    );
    nats.restart();
    assert!(
        wait_status(&addr, "/health/ready", 200, Duration::from_secs(30)),
        "ready again once NATS is back"
    );
    svc.stop();
}

struct Prometheus {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        // deploy/prometheus.yml with the test's target and a 1 s interval
        let shipped = std::fs::read_to_string(common::root().join("deploy/prometheus.yml")).unwrap();
        let cfg = shipped.replace("127.0.0.1:8080", target).replace("5s", "1s");
        assert!(cfg.contains(target));
        let cfg_path = dir.path().join("prometheus.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        // Its rule file beside it, as shipped.
        std::fs::copy(
            common::root().join("deploy/alerts.yml"),
            dir.path().join("alerts.yml"),
        )
        .unwrap();
        let port = common::free_port();
        let bin = ["/usr/bin/prometheus", "/usr/sbin/prometheus"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("prometheus: run scripts/bootstrap.sh");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        common::wait_port(port, true, Duration::from_secs(30));
        assert!(wait_status(&addr, "/-/ready", 200, Duration::from_secs(30)));
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    fn query(&self, expr: &str) -> serde_json::Value {
        let q: String = url_encode(expr);
        let (status, body) = common::http(&self.addr, "GET", &format!("/api/v1/query?query={q}"), &[], b"");
        assert_eq!(status, 200, "{expr}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn test_every_dashboard_panel_returns_data_from_a_real_prometheus() {
    let nats = common::NatsServer::start();
    let broker = common::Tansu::start(false);
    let mut cfg = common::config(&nats.url());
    cfg.kafka.enabled = true;
    cfg.kafka.brokers = broker.brokers();
    cfg.kafka.partitions = 2;
    // Explanations on, so that their panel has something to show.
    cfg.executor.explain_top_k = 3;
    let svc = common::Service::start(cfg);
    let prom = Prometheus::start(&svc.http());
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::root().join("grafana/dashboards/augur.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                // The instance variable as Grafana's "All" expands it.
                .map(|t| t["expr"].as_str().unwrap().replace("$instance", ".*"))
        })
        .collect();
    assert!(exprs.len() >= 15);
    // load: 6 real streams, 150 vectors each, at 300 vectors/s, plus one invalid message
    let vectors: Vec<pb::FeatureVector> = common::real_vectors().into_iter().take(900).collect();
    let url = nats.url();
    let feeder = std::thread::spawn(move || common::publish(&url, &vectors, 300.0));
    let mut failing = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(45) {
        std::thread::sleep(Duration::from_secs(2));
        failing = exprs
            .iter()
            .filter(|e| {
                let v = prom.query(e);
                v["status"] != "success" || v["data"]["result"].as_array().is_none_or(|r| r.is_empty())
            })
            .cloned()
            .collect();
        if failing.is_empty() && start.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    feeder.join().unwrap();
    assert!(failing.is_empty(), "panel queries without data: {failing:#?}");
    // and the numbers are the service's: predictions counted by Prometheus match the service
    let v = prom.query("sum(augur_predictions_published_total)");
    let n: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 0.0);
    // Every published prediction's xgb output was explained (ok, none failed), and the time
    // spent on it counted.
    let count = |q: &str| -> f64 {
        let v = prom.query(q);
        v["data"]["result"][0]["value"][1]
            .as_str()
            .map_or(0.0, |x| x.parse().unwrap())
    };
    assert!(count("sum(augur_explanations_total{result=\"ok\"})") > 0.0);
    assert_eq!(count("sum(augur_explanations_total{result=\"failed\"})"), 0.0);
    assert!(count("sum(augur_explain_duration_seconds_count)") > 0.0);
    // The shipped alert rules are loaded and evaluated by the real Prometheus.
    let (status, body) = common::http(&prom.addr, "GET", "/api/v1/rules", &[], b"");
    assert_eq!(status, 200);
    let rules: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let loaded: Vec<&str> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r["health"] == "ok")
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        loaded.contains(&"AugurModelAccuracyBelowBaseline") && loaded.len() >= 5,
        "{rules}"
    );
    // Live quality on the HTTP API: the members and the ensemble scored on both timeframes.
    let (_, q) = common::get_json(&svc.http(), "/api/v1/quality");
    let rows = q["rows"].as_array().unwrap();
    for model in ["ensemble", "lstm-direction", "cnn-pattern", "xgb-direction"] {
        let row = rows
            .iter()
            .find(|r| r["model"] == model)
            .unwrap_or_else(|| panic!("{model}: {q}"));
        assert!(row["total"]["outcomes"].as_u64().unwrap() > 0, "{row}");
    }
    // And lstm-direction's return forecasts, at every horizon (150 bars a stream: even 60 bars
    // later comes).
    let forecasts = q["forecasts"].as_array().unwrap();
    for h in [1, 5, 15, 60] {
        let row = forecasts
            .iter()
            .find(|r| r["model"] == "lstm-direction" && r["horizon_bars"] == h)
            .unwrap_or_else(|| panic!("h{h}: {q}"));
        assert!(row["total"]["count"].as_u64().unwrap() > 0, "{row}");
        assert!(row["total"]["mae"].as_f64().unwrap() > 0.0, "{row}");
    }
    svc.stop();
}

#[test]
fn test_a_config_patch_under_load_applies_to_the_following_events_with_nothing_lost() {
    let nats = common::NatsServer::start();
    let mut cfg = common::config(&nats.url());
    cfg.aggregator.deadline_ms = 10_000;
    let svc = common::Service::start(cfg);
    let addr = svc.http();
    let per_stream = 150;
    let vectors: Vec<pb::FeatureVector> = common::real_vectors()
        .into_iter()
        .filter(|v| v.symbol == "AAPL" || v.symbol == "EURUSD")
        .collect::<Vec<_>>();
    let mut by: BTreeMap<String, Vec<pb::FeatureVector>> = BTreeMap::new();
    for v in vectors {
        by.entry(v.symbol.clone()).or_default().push(v);
    }
    let mut feed = Vec::new();
    for i in 0..per_stream {
        for s in by.values() {
            feed.push(s[i].clone());
        }
    }
    let expected = 2 * (per_stream - 31);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async_nats::connect(nats.url())).unwrap();
    let mut sub = rt.block_on(client.subscribe("predictions.>")).unwrap();
    rt.block_on(client.flush()).unwrap();
    let url = nats.url();
    let feeder = std::thread::spawn(move || common::publish(&url, &feed, 200.0));
    std::thread::sleep(Duration::from_millis(900));
    let before = augur_actors::clock::unix_ns();
    let (status, body) = common::http(
        &addr,
        "PATCH",
        "/api/v1/config",
        &[("content-type", "application/json")],
        br#"{"aggregator": {"weights": {"cnn-pattern": 0.0, "xgb-direction": 0.0}}}"#,
    );
    let after = augur_actors::clock::unix_ns();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    feeder.join().unwrap();
    let preds = rt.block_on(async {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < expected && Instant::now() < deadline {
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                out.push(pb::EnsemblePrediction::decode(m.payload).unwrap());
            }
        }
        out
    });
    svc.stop();
    assert_eq!(preds.len(), expected, "zero lost");
    let (mut old, mut new) = (0, 0);
    for p in &preds {
        let lstm = &p
            .members
            .iter()
            .find(|m| m.model_id == "lstm-direction")
            .unwrap()
            .probabilities;
        let mean: Vec<f32> = (0..3)
            .map(|c| p.members.iter().map(|m| m.probabilities[c]).sum::<f32>() / p.members.len() as f32)
            .collect();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6);
        if p.published_at_ns > after {
            assert!(
                close(&p.probabilities, lstm),
                "after the patch only the LSTM weighs"
            );
            new += 1;
        } else if p.published_at_ns < before {
            assert!(close(&p.probabilities, &mean), "before the patch all weigh 1");
            old += 1;
        }
    }
    assert!(
        old > 0 && new > 0,
        "the patch landed mid-stream: {old} before, {new} after"
    );
}

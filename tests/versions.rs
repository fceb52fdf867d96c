//! Model versions at run time (issue 14): a version folder completed in the repository while
//! the service streams is loaded through the Open Inference Protocol's repository endpoint
//! (`load` with a `version` parameter), self-tested and warmed, then swapped in between two
//! events; nothing is lost, nothing is predicted twice, no window restarts. A truncated model,
//! a checksum that does not match and a half-written folder each fail with their reason
//! while the serving version goes on serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use augur_service::pb;
use common::kafka::{expected_keys, key_of};
use prost::Message as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TOKEN: &str = "operator-token";
const LSTM: &str = "lstm-direction";

/// A copy of the shipped repository (the models the config serves, and the feature sets).
fn repository() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for m in [
        LSTM,
        "cnn-pattern",
        "xgb-direction",
        "ensemble-meta",
        "feature_sets",
    ] {
        let ok = std::process::Command::new("cp")
            .arg("-r")
            .arg(common::root().join("models").join(m))
            .arg(d.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "copy {m}");
    }
    d
}

/// `SHA256SUMS` of every file in a folder, as `sha256sum` writes it.
fn seal(dir: &Path) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n != "SHA256SUMS")
        .collect();
    names.sort();
    let text: String = names
        .iter()
        .map(|n| {
            let digest = Sha256::digest(std::fs::read(dir.join(n)).unwrap());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("{hex}  {n}\n")
        })
        .collect();
    std::fs::write(dir.join("SHA256SUMS"), text).unwrap();
}

/// Version `v` of the LSTM: version 1's files under another version name.
fn copy_version(repo: &Path, v: &str) -> std::path::PathBuf {
    let from = repo.join(LSTM).join("1");
    let to = repo.join(LSTM).join(v);
    std::fs::create_dir_all(&to).unwrap();
    // Not its checksum list: a copy is incomplete until its own list is written.
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "SHA256SUMS" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    let manifest = std::fs::read_to_string(to.join("manifest.toml")).unwrap();
    assert!(manifest.contains("version = \"1\""));
    std::fs::write(
        to.join("manifest.toml"),
        manifest.replacen("version = \"1\"", &format!("version = \"{v}\""), 1),
    )
    .unwrap();
    to
}

fn load(http: &str, model: &str, version: &str) -> (u16, Value) {
    let body = json!({"parameters": {"version": version}}).to_string();
    let (s, b) = common::http(
        http,
        "POST",
        &format!("/v2/repository/models/{model}/load"),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        body.as_bytes(),
    );
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn serving_version(http: &str) -> String {
    let (s, m) = common::get_json(http, &format!("/v2/models/{LSTM}"));
    assert_eq!(s, 200, "{m}");
    m["versions"][0].as_str().unwrap().to_string()
}

fn index(http: &str) -> Vec<Value> {
    let (s, b) = common::http(
        http,
        "POST",
        "/v2/repository/index",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        b"",
    );
    assert_eq!(s, 200);
    serde_json::from_slice::<Value>(&b)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn test_a_version_loaded_while_streaming_takes_over_without_a_gap_and_broken_ones_are_refused() {
    let nats = common::NatsServer::start();
    let repo = repository();
    let mut cfg = common::config(&nats.url());
    cfg.service.models_dir = repo.path().to_path_buf();
    cfg.service.feature_sets_dir = repo.path().join("feature_sets");
    cfg.http.token = TOKEN.into();
    let svc = common::Service::start(cfg);
    let http = svc.http();
    assert_eq!(serving_version(&http), "1");

    // 4 real streams, 200 vectors each, at 40 vectors/s (20 s).
    let mut per: HashMap<String, usize> = HashMap::new();
    let vs: Vec<pb::FeatureVector> = common::real_vectors()
        .into_iter()
        .filter(|v| {
            let known = per.len();
            let c = per
                .entry(v.symbol.clone())
                .or_insert_with(|| if known < 4 { 0 } else { usize::MAX });
            if *c < 200 {
                *c += 1;
                true
            } else {
                false
            }
        })
        .collect();
    let expected = expected_keys(&vs);
    // What replay computes for the same vectors: version 2 holds version 1's weights, so every
    // LSTM output must equal replay's, before and after the swap and after an unload and a
    // load (a window with a gap, or one restarted, would not).
    let reference: HashMap<(String, String, u64), Vec<f32>> = {
        let mut file = Vec::new();
        for v in &vs {
            pb::FeatureVectorBatch {
                vectors: vec![v.clone()],
            }
            .encode_length_delimited(&mut file)
            .unwrap();
        }
        let cfg = common::config("nats://unused:4222");
        let out = actix_rt::System::new()
            .block_on(augur_service::service::replay(&cfg, &file))
            .unwrap();
        out.predictions
            .iter()
            .filter_map(|e| {
                let m = e.members.iter().find(|m| *m.model_id == *LSTM)?;
                Some((
                    (e.symbol.to_string(), e.timeframe.to_string(), e.sequence),
                    m.probabilities.clone(),
                ))
            })
            .collect()
    };
    assert_eq!(reference.len(), expected.len());
    let url = nats.url();
    let (sub_ready, subscribed) = std::sync::mpsc::channel();
    let want = expected.clone();
    let outputs = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                use futures::StreamExt as _;
                let client = async_nats::connect(&url).await.unwrap();
                let mut sub = client.subscribe("predictions.>").await.unwrap();
                client.flush().await.unwrap();
                sub_ready.send(()).unwrap();
                let (mut out, mut keys) = (Vec::new(), HashSet::new());
                let mut end = Instant::now() + Duration::from_secs(90);
                let mut complete = false;
                loop {
                    if !complete && want.is_subset(&keys) {
                        complete = true;
                        end = Instant::now() + Duration::from_secs(2);
                    }
                    match tokio::time::timeout(end.saturating_duration_since(Instant::now()), sub.next())
                        .await
                    {
                        Ok(Some(m)) => {
                            let p = pb::EnsemblePrediction::decode(m.payload.as_ref()).unwrap();
                            keys.insert(key_of(&p));
                            out.push(p);
                        }
                        _ => break,
                    }
                }
                out
            })
    });
    subscribed.recv_timeout(Duration::from_secs(10)).unwrap();
    let feed_url = nats.url();
    let feeder = std::thread::spawn(move || common::publish(&feed_url, &vs, 40.0));

    // Broken versions first (while version 1 serves), then version 2.
    let truncated = copy_version(repo.path(), "3");
    // The file it serves: lstm-direction runs on ONNX Runtime.
    let model = std::fs::read(truncated.join("model.onnx")).unwrap();
    std::fs::write(truncated.join("model.onnx"), &model[..model.len() / 2]).unwrap();
    seal(&truncated);
    let mismatch = copy_version(repo.path(), "4");
    seal(&mismatch);
    std::fs::write(mismatch.join("golden_outputs.f32"), [0u8; 12]).unwrap();
    let half_written = copy_version(repo.path(), "5");
    let outside = copy_version(repo.path(), "6");
    let manifest = std::fs::read_to_string(outside.join("manifest.toml")).unwrap();
    assert!(manifest.contains("file = \"model.onnx\""));
    std::fs::write(
        outside.join("manifest.toml"),
        manifest.replacen("file = \"model.onnx\"", "file = \"../1/model.onnx\"", 1),
    )
    .unwrap();
    std::fs::remove_file(outside.join("model.onnx")).unwrap();
    seal(&outside);
    let two = copy_version(repo.path(), "2");
    seal(&two);

    std::thread::sleep(Duration::from_secs(4));
    for (v, reason) in [
        ("3", "model.onnx"),
        ("4", "golden_outputs.f32: its SHA-256 is"),
        ("5", "incomplete: it has no SHA256SUMS"),
        ("6", "must be the name of a file in the model's folder"),
        ("../1", "not a version name"),
        ("9", "has no version \"9\""),
    ] {
        let (s, body) = load(&http, LSTM, v);
        assert_eq!(s, 400, "version {v}: {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(reason), "version {v}: {msg}");
        assert!(msg.contains("version 1 serves"), "version {v}: {msg}");
        assert_eq!(serving_version(&http), "1");
    }
    let _ = half_written;
    let (s, body) = load(&http, LSTM, "2");
    assert_eq!(s, 200, "{body}");
    assert_eq!(serving_version(&http), "2");
    let (s, _) = common::get_json(&http, &format!("/v2/models/{LSTM}/versions/2/ready"));
    assert_eq!(s, 200);
    // The index: version 2 serves; 1 is not loaded; 3, 4 and 5 say why they failed.
    let idx = index(&http);
    let entry = |v: &str| {
        idx.iter()
            .find(|e| e["name"] == LSTM && e["version"] == v)
            .unwrap_or_else(|| panic!("no {LSTM} {v} in {idx:?}"))
            .clone()
    };
    assert_eq!(entry("2")["state"], "READY");
    // Version 1 stays loaded, idle (service.max_loaded_versions = 2): not READY for `infer`.
    assert_eq!(entry("1")["state"], "UNAVAILABLE");
    assert!(
        entry("1")["reason"].as_str().unwrap().contains("loaded and idle"),
        "{}",
        entry("1")
    );
    assert!(entry("4")["reason"].as_str().unwrap().contains("SHA-256"));
    assert!(entry("5")["reason"].as_str().unwrap().contains("incomplete"));
    // Unloading a version that does not serve is refused.
    let (s, _) = common::http(
        &http,
        "POST",
        &format!("/v2/repository/models/{LSTM}/unload"),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        b"",
    );
    assert_eq!(s, 200, "unload of the serving version (others serve)");
    // Out of serving for a while: about 60 vectors go by.
    std::thread::sleep(Duration::from_millis(1500));
    let (s, body) = load(&http, LSTM, "2");
    assert_eq!(s, 200, "loaded again: {body}");

    assert!(!feeder.is_finished(), "the swap must land mid-stream");
    feeder.join().unwrap();
    let out = outputs.join().unwrap();
    svc.stop();

    // Nothing lost, nothing twice.
    let mut seen: HashMap<(String, String, u64), usize> = HashMap::new();
    for p in &out {
        *seen.entry(key_of(p)).or_default() += 1;
    }
    let lost: Vec<_> = expected.iter().filter(|k| !seen.contains_key(*k)).collect();
    assert!(
        lost.is_empty(),
        "lost {} of {}: {lost:?}",
        lost.len(),
        expected.len()
    );
    assert!(seen.values().all(|n| *n == 1), "a prediction twice");
    assert_eq!(seen.len(), expected.len());
    // Per stream, in sequence order: the LSTM answered every event it was asked (its window
    // never restarted), version 1 then version 2, never back. While it was unloaded it is
    // absent, not warming.
    let mut by_stream: HashMap<(String, String), Vec<&pb::EnsemblePrediction>> = HashMap::new();
    for p in &out {
        by_stream
            .entry((p.symbol.clone(), p.timeframe.clone()))
            .or_default()
            .push(p);
    }
    let (mut ones, mut twos) = (0, 0);
    for (stream, mut ps) in by_stream {
        ps.sort_by_key(|p| p.sequence);
        // Present, then absent only while it was unloaded (one run), then present to the end.
        let shape: String = ps
            .iter()
            .map(|p| {
                if p.members.iter().any(|m| m.model_id == LSTM) {
                    '1'
                } else {
                    '0'
                }
            })
            .collect();
        let runs: Vec<&str> = shape.split('1').filter(|r| !r.is_empty()).collect();
        assert!(
            runs.len() <= 1 && shape.ends_with('1') && runs.iter().all(|r| r.len() < 40),
            "{stream:?}: the LSTM's answers by event: {shape}"
        );
        let mut last = "1".to_string();
        for p in ps {
            let lstm: Vec<_> = p.members.iter().filter(|m| m.model_id == LSTM).collect();
            for m in lstm {
                let want = &reference[&key_of(p)];
                assert!(
                    m.probabilities
                        .iter()
                        .zip(want)
                        .all(|(a, b)| (a - b).abs() <= 1e-5),
                    "{stream:?} {} version {}: LSTM {:?}, replay {want:?}",
                    p.sequence,
                    m.model_version,
                    m.probabilities
                );
                assert!(
                    m.model_version >= last,
                    "{stream:?} {}: back to {}",
                    p.sequence,
                    m.model_version
                );
                last = m.model_version.clone();
                match m.model_version.as_str() {
                    "1" => ones += 1,
                    "2" => twos += 1,
                    other => panic!("version {other} served"),
                }
            }
        }
    }
    assert!(
        ones > 0 && twos > 0,
        "both versions served: {ones} by 1, {twos} by 2"
    );
}

/// The request path's prediction cache, by its counters.
fn cache_counts(http: &str) -> (f64, f64) {
    let (_, m) = common::http(http, "GET", "/metrics", &[], b"");
    let m = String::from_utf8_lossy(&m);
    let count = |result: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("augur_prediction_cache_requests_total")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (count("hit"), count("miss"))
}

#[test]
fn test_the_request_path_cache_answers_a_row_again_forgets_the_least_recent_and_never_crosses_versions() {
    let repo = repository();
    let mut cfg = common::config("nats://unused:4222");
    cfg.nats.enabled = false;
    cfg.service.models_dir = repo.path().to_path_buf();
    cfg.service.feature_sets_dir = repo.path().join("feature_sets");
    cfg.http.token = TOKEN.into();
    cfg.http.prediction_cache_entries = 2;
    let svc = common::Service::start(cfg);
    let http = svc.http();
    let vs: Vec<pb::FeatureVector> = common::real_vectors()
        .into_iter()
        .filter(|v| v.symbol == "AAPL")
        .take(40)
        .collect();
    let (_, meta) = common::get_json(&http, &format!("/v2/models/{LSTM}"));
    let shape = &meta["inputs"][0]["shape"];
    let (t, f) = (
        shape[1].as_u64().unwrap() as usize,
        shape[2].as_u64().unwrap() as usize,
    );
    let row = |start: usize| -> Vec<f32> {
        vs[start..start + t]
            .iter()
            .flat_map(|v| v.values.clone())
            .collect()
    };
    let infer = |start: usize| -> (String, Vec<f64>) {
        let body = json!({"inputs": [{"name": "window", "shape": [1, t, f], "datatype": "FP32", "data": row(start)}]});
        let (s, b) = common::http(
            &http,
            "POST",
            &format!("/v2/models/{LSTM}/infer"),
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            body.to_string().as_bytes(),
        );
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        let r: Value = serde_json::from_slice(&b).unwrap();
        let probs = r["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        (r["model_version"].as_str().unwrap().to_string(), probs)
    };
    let (h0, m0) = cache_counts(&http);
    let first = infer(0);
    let again = infer(0);
    assert_eq!(first, again, "the cached answer is the model's, bit for bit");
    assert_eq!(
        cache_counts(&http),
        (h0 + 1.0, m0 + 1.0),
        "the second ask is a hit"
    );
    infer(1);
    infer(2);
    // Room for two: row 0 was the least recently used, and is asked of the model again.
    let evicted = infer(0);
    assert_eq!(evicted, first);
    assert_eq!(cache_counts(&http), (h0 + 1.0, m0 + 4.0), "row 0 was forgotten");
    // Row 2 is cached under version 1; once version 2 serves, it is computed again.
    let two = copy_version(repo.path(), "2");
    seal(&two);
    let (s, body) = load(&http, LSTM, "2");
    assert_eq!(s, 200, "{body}");
    let (version, _) = infer(2);
    assert_eq!(version, "2");
    assert_eq!(
        cache_counts(&http),
        (h0 + 1.0, m0 + 5.0),
        "no answer of version 1 served for version 2"
    );
    svc.stop();
}

/// The states of `LSTM`'s versions in `/api/v1/models`: version -> (state, reason).
fn version_states(http: &str) -> HashMap<String, (String, String)> {
    let (s, models) = common::get_json(http, "/api/v1/models");
    assert_eq!(s, 200, "{models}");
    let lstm = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == LSTM)
        .unwrap_or_else(|| panic!("no {LSTM} in {models}"));
    lstm["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap().to_string(),
                (
                    v["state"].as_str().unwrap().to_string(),
                    v["reason"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// Waits (up to `secs`) until version `v` of the LSTM is in `state`; the last states seen.
fn wait_state(http: &str, v: &str, state: &str, secs: u64) -> HashMap<String, (String, String)> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let states = version_states(http);
        if states.get(v).is_some_and(|(s, _)| s == state) {
            return states;
        }
        assert!(
            Instant::now() < end,
            "version {v} never became {state}: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A metric's value for the LSTM.
fn lstm_metric(http: &str, name: &str) -> f64 {
    let (_, m) = common::http(http, "GET", "/metrics", &[], b"");
    String::from_utf8_lossy(&m)
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("model=\"{LSTM}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn test_the_version_policy_keeps_versions_ready_the_watch_takes_complete_ones_and_the_cap_evicts_the_least_recent()
 {
    let repo = repository();
    // The shipped version 1 has no checksum list: written here, as a shipper would.
    seal(&repo.path().join(LSTM).join("1"));
    seal(&copy_version(repo.path(), "2"));
    let mut cfg = common::config("nats://unused:4222");
    cfg.nats.enabled = false;
    cfg.service.models_dir = repo.path().to_path_buf();
    cfg.service.feature_sets_dir = repo.path().join("feature_sets");
    cfg.service.version_policy = [(LSTM.to_string(), "latest 2".to_string())].into();
    cfg.service.max_loaded_versions = 2;
    cfg.service.watch_interval_ms = 200;
    cfg.http.token = TOKEN.into();
    let svc = common::Service::start(cfg);
    let http = svc.http();

    // The highest version serves; the policy's other one loads in the background, then waits.
    assert_eq!(serving_version(&http), "2");
    let states = wait_state(&http, "1", "ready", 60);
    assert_eq!(states["2"].0, "serving", "{states:?}");
    assert_eq!(lstm_metric(&http, "augur_model_versions_loaded"), 2.0);

    // Versions 3 and 4, copied now (from 1's files), without their lists: being copied.
    let three = copy_version(repo.path(), "3");
    let four = copy_version(repo.path(), "4");
    let model = std::fs::read(four.join("model.onnx")).unwrap();
    std::fs::write(four.join("model.onnx"), &model[..model.len() / 2]).unwrap();

    // A swap to an idle version uses the copy loaded: its folder is not read again (here it
    // could not be: its model file is gone).
    std::fs::remove_file(repo.path().join(LSTM).join("1").join("model.onnx")).unwrap();
    let (s, body) = load(&http, LSTM, "1");
    assert_eq!(s, 200, "{body}");
    assert_eq!(serving_version(&http), "1");
    let states = version_states(&http);
    assert_eq!(
        states["2"].0, "ready",
        "the version replaced stays loaded: {states:?}"
    );

    // A folder being copied (no list yet) is passed over by the watch...
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(serving_version(&http), "1");
    assert_eq!(version_states(&http)["3"].0, "unloaded");
    // ... and taken once its list is written (last): the new highest version is swapped in.
    // Three loaded (3 serving, 1 and 2 idle) is over the cap of 2: the least recently used
    // idle one, 2, is freed, and counted.
    let evicted_before = lstm_metric(&http, "augur_model_versions_evicted_total");
    seal(&three);
    let states = wait_state(&http, "3", "serving", 60);
    assert_eq!(states["1"].0, "ready", "{states:?}");
    assert_eq!(states["2"].0, "unloaded", "{states:?}");
    assert_eq!(
        lstm_metric(&http, "augur_model_versions_evicted_total") - evicted_before,
        1.0
    );
    assert_eq!(lstm_metric(&http, "augur_model_versions_loaded"), 2.0);

    // A complete but broken version: the watch reports it with its reason, 3 serves on, and
    // it is not tried again until its folder changes.
    seal(&four);
    let states = wait_state(&http, "4", "failed", 60);
    assert!(states["4"].1.contains("model.onnx"), "{states:?}");
    assert_eq!(serving_version(&http), "3");

    // An idle version is unloaded by name; the serving one is not affected.
    let (s, _) = common::http(
        &http,
        "POST",
        &format!("/v2/repository/models/{LSTM}/unload"),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        json!({"parameters": {"version": "1"}}).to_string().as_bytes(),
    );
    assert_eq!(s, 200);
    let states = version_states(&http);
    assert_eq!(states["1"].0, "unloaded", "{states:?}");
    assert_eq!(states["3"].0, "serving", "{states:?}");
    assert_eq!(lstm_metric(&http, "augur_model_versions_loaded"), 1.0);

    // A copy that lands its list first (`rsync` copies in name order: SHA256SUMS before
    // manifest.toml) is checked again once the rest arrives, and taken.
    // (Version 3's files: version 1's model file is gone by now.)
    let stage = repo.path().join("staged-5");
    std::fs::create_dir(&stage).unwrap();
    for e in std::fs::read_dir(&three).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "SHA256SUMS" {
            std::fs::copy(e.path(), stage.join(e.file_name())).unwrap();
        }
    }
    let manifest = std::fs::read_to_string(stage.join("manifest.toml")).unwrap();
    std::fs::write(
        stage.join("manifest.toml"),
        manifest.replacen("version = \"3\"", "version = \"5\"", 1),
    )
    .unwrap();
    seal(&stage);
    let five = repo.path().join(LSTM).join("5");
    std::fs::create_dir(&five).unwrap();
    std::fs::copy(stage.join("SHA256SUMS"), five.join("SHA256SUMS")).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    for e in std::fs::read_dir(&stage).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "SHA256SUMS" {
            std::fs::copy(e.path(), five.join(e.file_name())).unwrap();
        }
    }
    let states = wait_state(&http, "5", "serving", 60);
    assert_eq!(states["3"].0, "ready", "{states:?}");
    // Unload with the serving version's name is refused (unload without one takes the
    // member out of serving).
    let (s, _) = common::http(
        &http,
        "POST",
        &format!("/v2/repository/models/{LSTM}/unload"),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        json!({"parameters": {"version": "5"}}).to_string().as_bytes(),
    );
    assert_eq!(s, 400);
    assert_eq!(serving_version(&http), "5");

    // The other members' real second versions (train.py --candidates) load in place of
    // their first: the same window, features, classes and label, their golden self-test
    // passed in the service.
    for m in ["cnn-pattern", "xgb-direction"] {
        let ok = std::process::Command::new("cp")
            .arg("-r")
            .arg(common::root().join("models/candidates").join(m).join("2"))
            .arg(repo.path().join(m))
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let (s, body) = load(&http, m, "2");
        assert_eq!(s, 200, "{m}: {body}");
        let (s, v) = common::get_json(&http, &format!("/v2/models/{m}"));
        assert_eq!(s, 200);
        assert_eq!(v["versions"][0], "2", "{m}: {v}");
    }
    svc.stop();
}

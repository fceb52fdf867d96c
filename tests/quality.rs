//! Online quality against the offline figures: replaying the committed real series, the labels
//! Augur resolves equal the labels `models/train/train.py` computes for the same rows, and each
//! member's online accuracy and log-loss over the test split's rows equal its manifest's
//! `test_accuracy` and `test_log_loss`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::collections::{BTreeMap, HashMap};

use augur_service::service::replay;

const MEMBERS: [&str; 3] = ["lstm-direction", "cnn-pattern", "xgb-direction"];

/// train.py's own labels and test split, per series: {"AAPL/1d": {"labels": [y per bar,
/// -1 past the data], "test": [first, last] 0-based bar indices of the test split}}.
const LABELS_PY: &str = r#"
import json, sys
sys.path.insert(0, "models/train")
import features, train
out = {}
for sym, tf, ohlcv in train.load_series():
    f = features.compute(ohlcv)
    y = train.labels(ohlcv[:, 3], f[:, 19])
    first = features.WARMUP_BARS - 1 + train.MAX_T - 1
    n = len(f) - train.HORIZON - first
    b = int(n * 0.85)
    out[f"{sym}/{tf}"] = {"labels": [int(v) for v in y], "test": [first + b, len(f) - train.HORIZON - 1]}
json.dump(out, sys.stdout)
"#;

struct Series {
    labels: Vec<i64>,
    test: [usize; 2],
}

fn manifest_metric(id: &str, key: &str) -> f64 {
    let text = std::fs::read_to_string(common::root().join(format!("models/{id}/1/manifest.toml"))).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    t["metrics"][key].as_float().unwrap()
}

#[test]
fn test_online_labels_and_test_figures_equal_the_offline_ones() {
    let py = std::process::Command::new(common::root().join(".venv/bin/python"))
        .arg("-c")
        .arg(LABELS_PY)
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let json: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    let offline: HashMap<String, Series> = json
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let labels = v["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            let t = |i: usize| v["test"][i].as_u64().unwrap() as usize;
            (
                k.clone(),
                Series {
                    labels,
                    test: [t(0), t(1)],
                },
            )
        })
        .collect();

    let file = std::fs::read(common::root().join("models/data/replay/ta-v1.pb")).unwrap();
    let cfg = common::config("nats://unused:4222");
    let out = actix_rt::System::new().block_on(replay(&cfg, &file)).unwrap();
    let board = out.quality.expect("outcomes are on by default");
    let outcomes = board.recorded();

    // Every prediction whose horizon bar is in the file is resolved, with train.py's label.
    let mut per_series: BTreeMap<String, usize> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for o in &outcomes {
        let name = format!("{}/{}", o.symbol, o.timeframe);
        let s = &offline[&name];
        let t = (o.sequence - 1) as usize;
        if s.labels[t] != o.label as i64 {
            mismatches.push((name.clone(), o.sequence, o.label, s.labels[t], o.realized_return));
        }
        *per_series.entry(name).or_default() += 1;
    }
    assert!(
        mismatches.is_empty(),
        "labels differ from train.py's: {mismatches:?}"
    );
    for (name, s) in &offline {
        let resolvable = out
            .predictions
            .iter()
            .filter(|p| format!("{}/{}", p.symbol, p.timeframe) == *name)
            .filter(|p| (p.sequence as usize) <= s.labels.len() - 5)
            .count();
        assert_eq!(per_series.get(name).copied().unwrap_or(0), resolvable, "{name}");
        assert!(resolvable > 0, "{name}");
    }
    println!("{} outcomes, every label equal to train.py's", outcomes.len());

    // Each member over the test split's rows, as train.py scores it.
    for id in MEMBERS {
        let (mut n, mut correct, mut log_loss) = (0usize, 0usize, 0.0f64);
        for o in &outcomes {
            let s = &offline[&format!("{}/{}", o.symbol, o.timeframe)];
            let t = (o.sequence - 1) as usize;
            if t < s.test[0] || t > s.test[1] {
                continue;
            }
            let m = o.outputs.iter().find(|m| &*m.model_id == id).unwrap();
            let (best, _) = augur_actors::types::argmax(&m.probabilities);
            n += 1;
            correct += usize::from(best == o.label);
            log_loss -= (m.probabilities[o.label] as f64)
                .clamp(augur_actors::outcomes::EPS, 1.0)
                .ln();
        }
        let accuracy = correct as f64 / n as f64;
        let log_loss = log_loss / n as f64;
        let (want_acc, want_ll) = (
            manifest_metric(id, "test_accuracy"),
            manifest_metric(id, "test_log_loss"),
        );
        let rows = manifest_metric_int(id, "test_rows");
        println!(
            "{id}: {n} test rows (manifest {rows}); accuracy {accuracy:.6} (manifest {want_acc}), log-loss {log_loss:.6} (manifest {want_ll})"
        );
        assert_eq!(n as i64, rows, "{id}: test rows");
        assert!(
            (accuracy - want_acc).abs() < 5e-7 + 1e-9,
            "{id}: accuracy {accuracy} vs {want_acc}"
        );
        assert!(
            (log_loss - want_ll).abs() < 2e-6,
            "{id}: log-loss {log_loss} vs {want_ll}"
        );
    }

    // The scoreboard's totals are the same sums over every outcome, per timeframe.
    let report = board.report();
    for id in MEMBERS {
        for tf in ["1d", "1h"] {
            let row = report
                .iter()
                .find(|r| r.model == id && r.timeframe == tf)
                .unwrap_or_else(|| panic!("{id} {tf} scored"));
            let mine: Vec<_> = outcomes.iter().filter(|o| &*o.timeframe == tf).collect();
            assert_eq!(row.total.outcomes as usize, mine.len());
            assert_eq!(
                row.reference.test_accuracy,
                Some(manifest_metric(id, "test_accuracy"))
            );
            assert!(row.window.outcomes > 0 && row.window.ic.is_some());
        }
    }
}

fn manifest_metric_int(id: &str, key: &str) -> i64 {
    let text = std::fs::read_to_string(common::root().join(format!("models/{id}/1/manifest.toml"))).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    t["metrics"][key].as_integer().unwrap()
}

//! ta-v1 in Rust equals the Python trainer's ta-v1 (1e-6) on every bar of the committed real
//! data: the replay file holds the Python features; Rust recomputes them from the CSVs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::collections::BTreeMap;

use augur_tools::features::TaV1;

/// (symbol, timeframe) -> OHLCV rows, oldest first, from the committed CSVs.
fn series() -> BTreeMap<(String, String), Vec<[f64; 5]>> {
    augur_tools::feed::load_series(&common::root().join("models/data"))
        .unwrap()
        .into_iter()
        .map(|s| ((s.symbol, s.timeframe), s.rows))
        .collect()
}

#[test]
fn test_rust_ta_v1_equals_the_python_features_on_every_committed_bar() {
    let python: Vec<augur_service::pb::FeatureVector> = common::real_vectors();
    let mut by: BTreeMap<(String, String), BTreeMap<u64, Vec<f32>>> = BTreeMap::new();
    for v in python {
        by.entry((v.symbol, v.timeframe))
            .or_default()
            .insert(v.sequence, v.values);
    }
    let mut compared = 0;
    let mut worst = 0.0f32;
    for (key, rows) in series() {
        let want = &by[&key];
        let mut st = TaV1::default();
        for (i, r) in rows.iter().enumerate() {
            let got = st.update(r[0], r[1], r[2], r[3], r[4]);
            let seq = i as u64 + 1;
            match (got, want.get(&seq)) {
                (Some(g), Some(w)) => {
                    for (a, b) in g.iter().zip(w) {
                        worst = worst.max((a - b).abs());
                    }
                    compared += 1;
                }
                (None, None) => {}
                (g, w) => panic!(
                    "{key:?} bar {seq}: rust {:?} python {:?}",
                    g.is_some(),
                    w.is_some()
                ),
            }
        }
    }
    println!("compared {compared} vectors, max |rust - python| = {worst:e}");
    assert_eq!(compared, 18085);
    assert!(worst <= 1e-6, "max difference {worst:e}");
}

#[test]
fn test_feed_vectors_equal_the_replay_file_for_a_real_series() {
    let series = augur_tools::feed::load_series(&common::root().join("models/data")).unwrap();
    let aapl = series.iter().find(|s| s.symbol == "AAPL").unwrap();
    let fed = augur_tools::feed::vectors(aapl, "AAPL", "1d");
    let replay: Vec<_> = common::real_vectors()
        .into_iter()
        .filter(|v| v.symbol == "AAPL")
        .collect();
    assert_eq!(fed.len(), replay.len());
    for (a, b) in fed.iter().zip(&replay) {
        assert_eq!((a.sequence, &a.values), (b.sequence, &b.values));
    }
}

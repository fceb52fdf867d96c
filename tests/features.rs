//! ta-v1 in Rust equals the Python trainer's ta-v1 (1e-6) on every bar of the committed real
//! data: the replay file holds the Python features; Rust recomputes them from the CSVs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::collections::BTreeMap;
use std::io::Read;

use augur::features::TaV1;

/// (symbol, timeframe) -> OHLCV rows, oldest first, from the committed CSVs.
fn series() -> BTreeMap<(String, String), Vec<[f64; 5]>> {
    let mut out = BTreeMap::new();
    let gz = std::fs::read(common::root().join("models/data/stocks.csv.gz")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    let mut rows: BTreeMap<String, Vec<(String, [f64; 5])>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let p = |i: usize| f[i].parse::<f64>().unwrap();
        rows.entry(f[0].to_string())
            .or_default()
            .push((f[1].to_string(), [p(2), p(3), p(4), p(5), p(6)]));
    }
    for (sym, mut r) in rows {
        r.sort_by(|a, b| a.0.cmp(&b.0));
        out.insert((sym, "1d".to_string()), r.into_iter().map(|x| x.1).collect());
    }
    let fx = std::fs::read_to_string(common::root().join("models/data/FOREX_EURUSD_1H_ASK.csv")).unwrap();
    let fx_rows = fx
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<f64> = l.split(',').skip(1).map(|x| x.parse().unwrap()).collect();
            [f[0], f[1], f[2], f[3], f[4]]
        })
        .collect();
    out.insert(("EURUSD".into(), "1h".into()), fx_rows);
    out
}

#[test]
fn test_rust_ta_v1_equals_the_python_features_on_every_committed_bar() {
    let python: Vec<augur::pb::FeatureVector> = common::real_vectors();
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

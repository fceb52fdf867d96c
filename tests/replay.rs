//! `augur replay` over the committed real series: windows and normalisation are right (every
//! member equals the reference framework on the same window), and replays are reproducible.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::collections::HashMap;

use augur_runtime::{DeviceSpec, Model, read_f32};
use augur_service::codec::read_length_delimited;
use augur_service::pb;
use augur_service::service::{ReplayOutput, replay};
use prost::Message;

const MEMBERS: [&str; 3] = ["lstm-direction", "cnn-pattern", "xgb-direction"];

fn replay_file() -> Vec<u8> {
    std::fs::read(common::root().join("models/data/replay/ta-v1.pb")).unwrap()
}

/// (symbol, timeframe, sequence) of every vector, in file order.
fn keys(file: &[u8]) -> Vec<(String, String, u64)> {
    read_length_delimited(file)
        .unwrap()
        .into_iter()
        .flat_map(|p| pb::FeatureVectorBatch::decode(p).unwrap().vectors)
        .map(|v| (v.symbol, v.timeframe, v.sequence))
        .collect()
}

fn run(cfg: &augur_service::config::Config, bytes: &[u8]) -> ReplayOutput {
    actix_rt::System::new().block_on(replay(cfg, bytes)).unwrap()
}

#[test]
fn test_every_member_equals_the_reference_framework_on_the_replayed_real_series() {
    let file = replay_file();
    let keys = keys(&file);
    let index: HashMap<_, _> = keys.iter().cloned().enumerate().map(|(i, k)| (k, i)).collect();
    let expected = read_f32(&common::root().join("models/data/replay/expected_members.f32")).unwrap();
    assert_eq!(expected.len(), keys.len() * 9);
    let full = (0..keys.len())
        .filter(|&i| expected[i * 9..(i + 1) * 9].iter().all(|x| x.is_finite()))
        .count();

    let out = run(&common::config("nats://unused:4222"), &file);
    assert!(out.rejects.is_empty(), "{:?}", out.rejects);
    assert_eq!(
        out.predictions.len(),
        full,
        "one prediction per vector whose windows are full"
    );
    let mut worst = 0.0f32;
    for p in &out.predictions {
        let i = index[&(p.symbol.to_string(), p.timeframe.to_string(), p.sequence)];
        assert_eq!((p.models_expected, p.models_used), (3, 3));
        for m in &p.members {
            let j = MEMBERS.iter().position(|x| *x == &*m.model_id).unwrap();
            let want = &expected[i * 9 + j * 3..i * 9 + j * 3 + 3];
            for (a, b) in m.probabilities.iter().zip(want) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    println!(
        "max |member - reference| over {} predictions: {worst:e}",
        out.predictions.len()
    );
    assert!(worst <= 1e-5, "max difference {worst:e}");
}

#[test]
fn test_replay_is_reproducible() {
    let file = replay_file();
    // The first 3000 messages: AAPL and part of FB, enough to fill every window.
    let msgs = read_length_delimited(&file).unwrap();
    let mut part = Vec::new();
    for m in msgs.iter().take(3000) {
        prost::encoding::encode_varint(m.len() as u64, &mut part);
        part.extend_from_slice(m);
    }
    let cfg = common::config("nats://unused:4222");
    let a = run(&cfg, &part);
    let b = run(&cfg, &part);
    assert_eq!(a.predictions.len(), b.predictions.len());
    assert!(!a.predictions.is_empty());
    for (x, y) in a.predictions.iter().zip(&b.predictions) {
        assert_eq!(
            (&x.event_id, &x.symbol, x.sequence, x.direction),
            (&y.event_id, &y.symbol, y.sequence, y.direction)
        );
        for (p, q) in x.probabilities.iter().zip(&y.probabilities) {
            assert!((p - q).abs() <= 1e-6);
        }
    }
}

#[test]
fn test_stacking_runs_the_meta_model_on_the_members_probabilities() {
    let file = replay_file();
    let msgs = read_length_delimited(&file).unwrap();
    let mut part = Vec::new();
    for m in msgs.iter().take(200) {
        prost::encoding::encode_varint(m.len() as u64, &mut part);
        part.extend_from_slice(m);
    }
    let mut cfg = common::config("nats://unused:4222");
    cfg.aggregator.method = augur_actors::aggregator::Method::Stacking;
    let out = run(&cfg, &part);
    assert!(!out.predictions.is_empty());
    let meta = Model::load(&common::root().join("models/ensemble-meta/1"), DeviceSpec::Cpu).unwrap();
    for p in &out.predictions {
        assert_eq!(p.method, "stacking");
        let input: Vec<f32> = MEMBERS
            .iter()
            .flat_map(|id| {
                p.members
                    .iter()
                    .find(|m| &*m.model_id == *id)
                    .unwrap()
                    .probabilities
                    .clone()
            })
            .collect();
        let want = meta.predict(&input, 1).unwrap();
        for (a, b) in p.probabilities.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5, "{:?} vs {want:?}", p.probabilities);
        }
    }
}

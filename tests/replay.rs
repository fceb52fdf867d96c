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

#[test]
fn test_explanations_name_the_largest_treeshap_contributions_and_change_no_probability() {
    let file = replay_file();
    let off = run(&common::config("nats://unused:4222"), &file);
    let mut cfg = common::config("nats://unused:4222");
    cfg.executor.explain_top_k = 3;
    // A TreeSHAP pass per row makes XGBoost ~20x slower: replay feeds as fast as it can, so
    // the queues must hold its backlog rather than shed (the stream sheds, counted).
    cfg.executor.queue_capacity = 1 << 20;
    cfg.router.model_mailbox = 1 << 20;
    let on = run(&cfg, &file);
    assert_eq!(on.predictions.len(), off.predictions.len());
    // The reference: the evaluator's own contributions for a row, from the same window.
    let xgb =
        augur_runtime::xgboost::XgbModel::load(&common::root().join("models/xgb-direction/1/model.json"))
            .unwrap();
    let columns = augur_service::codec::Validator::feature_names(&common::root().join("models/feature_sets"))
        ["ta-v1"]
        .clone();
    let mut explained = 0;
    let by_key: HashMap<_, _> = off
        .predictions
        .iter()
        .map(|p| ((p.symbol.clone(), p.timeframe.clone(), p.sequence), p))
        .collect();
    for a in &on.predictions {
        let b = by_key[&(a.symbol.clone(), a.timeframe.clone(), a.sequence)];
        // libtorch rounds by batch size, which depends on timing: within 1e-5 for the torch
        // members and the ensemble; XGBoost's rows are bit-equal.
        let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| (p - q).abs() <= 1e-5);
        assert!(
            close(&a.probabilities, &b.probabilities),
            "explanations change no output: {:?} {} {:?} against {:?} {:?}",
            a.symbol,
            a.sequence,
            a.probabilities,
            b.probabilities,
            (a.method, b.method, a.members.len(), b.members.len())
        );
        for (m, n) in a.members.iter().zip(&b.members) {
            assert_eq!(m.model_id, n.model_id);
            if &*m.model_id == "xgb-direction" {
                assert_eq!(m.probabilities, n.probabilities);
            } else {
                assert!(close(&m.probabilities, &n.probabilities));
            }
            assert!(n.contributions.is_empty(), "off by default");
            if &*m.model_id != "xgb-direction" {
                assert!(m.contributions.is_empty(), "{} cannot explain", m.model_id);
                continue;
            }
            // 3 inputs, largest magnitude first, then the bias; named by column and bar.
            assert_eq!(m.contributions.len(), 4, "{:?}", m.contributions);
            assert_eq!(&*m.contributions[3].feature, "bias");
            let mags: Vec<f32> = m.contributions[..3].iter().map(|c| c.value.abs()).collect();
            assert!(mags.windows(2).all(|w| w[0] >= w[1]), "{mags:?}");
            for c in &m.contributions[..3] {
                let (col, back) = c.feature.split_once('[').unwrap();
                assert!(columns.iter().any(|x| x == col), "{}", c.feature);
                assert!(["t]", "t-1]", "t-2]"].contains(&back), "{}", c.feature);
            }
            explained += 1;
        }
    }
    assert_eq!(explained, on.predictions.len(), "every XGBoost output explained");
    // The bias is the model's expected value for the class called, the same for every row.
    let p = &on.predictions[0];
    let m = p
        .members
        .iter()
        .find(|m| &*m.model_id == "xgb-direction")
        .unwrap();
    let (called, _) = augur_actors::types::argmax(&m.probabilities);
    let width = xgb.num_feature() + 1;
    let mut c = vec![0.0f32; xgb.num_class() * width];
    xgb.contributions(&vec![0.0; xgb.num_feature()], &mut c).unwrap();
    assert!((m.contributions[3].value - c[called * width + width - 1]).abs() <= 1e-6);
    // And the wire carries them.
    let wire = pb::EnsemblePrediction::decode(&augur_service::codec::encode_prediction(p)[..]).unwrap();
    let w = wire
        .members
        .iter()
        .find(|m| m.model_id == "xgb-direction")
        .unwrap();
    assert_eq!(w.contributions.len(), 4);
    assert_eq!(w.contributions[0].feature, &*m.contributions[0].feature);
}

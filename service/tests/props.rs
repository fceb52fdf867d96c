//! Property tests of the service's input parsers: whatever bytes, batches, config text or
//! request bodies arrive, the parser answers (accepts, or refuses with reasons) and never
//! panics, and it keeps its documented promises:
//! - the codec accepts exactly the vectors its rules allow (each one equal to its source),
//!   counts every other vector once in a single refusal per message, keeps that refusal's
//!   dead-letter headers on one line and small whatever the input, agrees with prost on what
//!   is not a FeatureVectorBatch, and a valid batch stays valid when re-encoded;
//! - the length-delimited reader finds every framed message, and an error exactly when a cut
//!   falls inside one;
//! - the config loader lists problems for whatever it refuses (naming every unknown key),
//!   obeys file then environment, and what it accepts is problem-free and round-trips;
//! - the HTTP body types (`PredictRequest`, `ConfigPatch`) accept exactly their documented
//!   keys. The checks behind them (`check_window`, `merge`) are private to the actix
//!   handlers and are covered by the end-to-end HTTP tests instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use augur_actors::types::{Transport, Vector};
use augur_service::codec::{
    MAX_CORRELATION_ID, MAX_INDICES, MAX_SEQUENCE, MAX_SYMBOL, MAX_TOKEN, Refusal, RejectCode, Validator,
    read_length_delimited,
};
use augur_service::config::{Config, ConfigError};
use augur_service::http::{ConfigPatch, PredictRequest};
use augur_service::pb;
use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;
use serde_json::{Value as Json, json};

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Codec
// ---------------------------------------------------------------------------------------------

/// "Now" for every decode; event times are generated around it.
const NOW: i64 = 1_700_000_000_000;
/// The timeframes the test validator serves.
const TIMEFRAMES: [&str; 3] = ["1m", "1h", "1d"];
/// Feature set -> number of values; `empty-v0` has none, so an empty vector can be valid.
const FEATURE_SETS: [(&str, usize); 2] = [("ta-v1", 3), ("empty-v0", 0)];
/// The most a dead letter's headers (reason, reasons, indices, detail) may weigh together.
const HEADER_BUDGET: usize = 4096;

fn validator(max_age_ms: u64) -> Validator {
    Validator::new(
        FEATURE_SETS
            .iter()
            .map(|(n, c)| (n.to_string(), *c))
            .collect::<HashMap<_, _>>(),
        TIMEFRAMES.iter().map(|t| t.to_string()).collect(),
        max_age_ms,
    )
}

/// Empty, a forbidden character (subject syntax, whitespace, control), too long for any
/// token, or anything at all.
fn hostile_token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        r"[A-Za-z0-9]{0,3}[.*>\t \x{0}\x{1f}\x{7f}\x{85}\x{a0}\x{2028}\x{3000}][A-Za-z0-9]{0,3}",
        "[a-z]{65,80}",
        ".{0,40}",
    ]
}

fn symbol() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(strings(&["AAPL", "MSFT", "BTCUSDT"])),
        2 => "[A-Za-z0-9_-]{1,64}",
        1 => r"\p{L}{1,16}",
        2 => hostile_token(),
    ]
}

fn timeframe() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(strings(&TIMEFRAMES)),
        1 => prop::sample::select(strings(&["5m", "4h"])),
        1 => "[a-z0-9]{32,33}",
        2 => hostile_token(),
    ]
}

fn feature_set() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("ta-v1".to_string()),
        1 => Just("empty-v0".to_string()),
        1 => Just("ta-v9".to_string()),
        2 => hostile_token(),
    ]
}

fn exchange() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        3 => prop::sample::select(strings(&["XNAS", "BINANCE"])),
        1 => "[A-Z]{32,33}",
        2 => hostile_token(),
    ]
}

fn correlation_id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        3 => "[ -~]{1,40}",
        1 => "[a-z]{256,257}",
        1 => r"[a-z ]{0,5}[\x{0}-\x{1f}\x{7f}-\x{9f}][a-z ]{0,5}",
        1 => ".{0,40}",
    ]
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        20 => -1e6f32..1e6f32,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        2 => any::<f32>(),
    ]
}

fn values() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        6 => prop::collection::vec(value(), 3),
        1 => Just(Vec::new()),
        2 => prop::collection::vec(value(), 0..6),
    ]
}

fn event_time() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => (NOW - 120_000)..=(NOW + 5_000),
        1 => Just(0i64),
        1 => i64::MIN..0,
        1 => any::<i64>(),
    ]
}

fn sequence() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..10_000,
        1 => Just(MAX_SEQUENCE),
        1 => Just(MAX_SEQUENCE + 1),
        1 => any::<u64>(),
    ]
}

fn bar() -> impl Strategy<Value = Option<pb::Bar>> {
    prop::option::of(
        (
            any::<f64>(),
            any::<f64>(),
            any::<f64>(),
            any::<f64>(),
            any::<f64>(),
        )
            .prop_map(|(open, high, low, close, volume)| pb::Bar {
                open,
                high,
                low,
                close,
                volume,
            }),
    )
}

/// Any feature vector: mostly valid fields, each sometimes hostile.
fn feature_vector() -> impl Strategy<Value = pb::FeatureVector> {
    (
        (symbol(), timeframe(), feature_set(), values(), exchange()),
        (event_time(), sequence(), correlation_id(), any::<i64>(), bar()),
    )
        .prop_map(
            |(
                (symbol, timeframe, feature_set, values, exchange),
                (event_time_ms, sequence, correlation_id, published_at_ns, bar),
            )| pb::FeatureVector {
                symbol,
                timeframe,
                event_time_ms,
                sequence,
                feature_set,
                values,
                bar,
                exchange,
                correlation_id,
                published_at_ns,
            },
        )
}

/// One decode: a batch and the circumstances it arrives in.
#[derive(Debug, Clone)]
struct Case {
    batch: pb::FeatureVectorBatch,
    subject: Option<String>,
    max_age_ms: u64,
    history: bool,
    transport: &'static str,
}

fn subject() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => Just(None),
        2 => prop::sample::select(strings(&[
            "1m", "1h", "1m.AAPL", "1m.MSFT", "1h.AAPL", "1m.AAPL.X", ""
        ]))
        .prop_map(Some),
        1 => ".{0,70}".prop_map(Some),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(feature_vector(), 0..8),
        subject(),
        prop::sample::select(vec![0u64, 60_000]),
        any::<bool>(),
        prop::sample::select(vec!["nats", "kafka", "jetstream", "http"]),
    )
        .prop_map(|(vectors, subject, max_age_ms, history, transport)| Case {
            batch: pb::FeatureVectorBatch { vectors },
            subject,
            max_age_ms,
            history,
            transport,
        })
}

/// The codes of every documented check the vector fails (read from the module docs and the
/// constants, independent of the order the codec checks in). Empty: the vector must be
/// accepted. A vector whose set holds one code must be refused with that code.
fn faults(v: &pb::FeatureVector, c: &Case) -> BTreeSet<&'static str> {
    let mut f = BTreeSet::new();
    if v.symbol.is_empty() || v.timeframe.is_empty() {
        f.insert("invalid_field");
    }
    for (value, max, token) in [
        (&v.symbol, MAX_SYMBOL, true),
        (&v.timeframe, MAX_TOKEN, true),
        (&v.feature_set, MAX_TOKEN, true),
        (&v.exchange, MAX_TOKEN, true),
        (&v.correlation_id, MAX_CORRELATION_ID, false),
    ] {
        if value.len() > max {
            f.insert("field_too_long");
        }
        if value
            .chars()
            .any(|ch| ch.is_control() || (token && (matches!(ch, '.' | '*' | '>') || ch.is_whitespace())))
        {
            f.insert("invalid_token");
        }
    }
    if let Some(s) = &c.subject {
        let (tf, symbol) = match s.split_once('.') {
            Some((tf, symbol)) => (tf, Some(symbol)),
            None => (s.as_str(), None),
        };
        if tf != v.timeframe {
            f.insert("timeframe_mismatch");
        }
        if symbol.is_some_and(|s| s != v.symbol) {
            f.insert("symbol_mismatch");
        }
    }
    if v.event_time_ms < 0 {
        f.insert("invalid_event_time");
    }
    if v.sequence > MAX_SEQUENCE {
        f.insert("invalid_sequence");
    }
    if !TIMEFRAMES.contains(&v.timeframe.as_str()) {
        f.insert("unknown_timeframe");
    }
    match FEATURE_SETS.iter().find(|(n, _)| *n == v.feature_set) {
        None => {
            f.insert("unknown_feature_set");
        }
        Some((_, n)) if *n != v.values.len() => {
            f.insert("wrong_feature_count");
        }
        Some(_) => {}
    }
    if v.values.iter().any(|x| !x.is_finite()) {
        f.insert("non_finite_value");
    }
    if c.max_age_ms > 0 && !c.history && NOW.saturating_sub(v.event_time_ms) > c.max_age_ms as i64 {
        f.insert("stale");
    }
    f
}

/// An old vector from a durable log is predicted and marked late, not refused.
fn expected_late(v: &pb::FeatureVector, c: &Case) -> u64 {
    let age = NOW.saturating_sub(v.event_time_ms);
    if c.max_age_ms > 0 && age > c.max_age_ms as i64 {
        age as u64
    } else {
        0
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// What every accepted vector satisfies, whatever came in.
fn check_accepted(v: &Vector) -> Result<(), TestCaseError> {
    prop_assert!(v.values.iter().all(|x| x.is_finite()), "{:?}", v.values);
    prop_assert!(
        FEATURE_SETS.iter().any(|(_, n)| *n == v.values.len()),
        "{} values",
        v.values.len()
    );
    for (field, s, max) in [
        ("symbol", &*v.key.symbol, MAX_SYMBOL),
        ("timeframe", &*v.key.timeframe, MAX_TOKEN),
    ] {
        prop_assert!(!s.is_empty() && s.len() <= max, "{field} {s:?}");
        prop_assert!(
            !s.chars()
                .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '.' | '*' | '>')),
            "{field} {s:?} is not a subject token"
        );
    }
    prop_assert!(TIMEFRAMES.contains(&&*v.key.timeframe));
    prop_assert!(v.event_time_ms >= 0, "{}", v.event_time_ms);
    prop_assert!(v.sequence <= MAX_SEQUENCE, "{}", v.sequence);
    prop_assert!(
        !v.correlation_id.is_empty()
            && v.correlation_id.len() <= MAX_CORRELATION_ID
            && !v.correlation_id.chars().any(|c| c.is_control()),
        "{:?}",
        v.correlation_id
    );
    prop_assert!(v.ack.is_none());
    Ok(())
}

/// An accepted vector is its source, with the default correlation id when it had none.
fn check_same_as_source(
    got: &Vector,
    src: &pb::FeatureVector,
    late_ms: u64,
    transport: Transport,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(&*got.key.symbol, src.symbol.as_str());
    prop_assert_eq!(&*got.key.timeframe, src.timeframe.as_str());
    prop_assert_eq!(got.sequence, src.sequence);
    prop_assert_eq!(got.event_time_ms, src.event_time_ms);
    prop_assert_eq!(got.published_at_ns, src.published_at_ns);
    prop_assert_eq!(bits(&got.values), bits(&src.values));
    let id = if src.correlation_id.is_empty() {
        format!("{}-{}-{}", src.symbol, src.timeframe, src.sequence)
    } else {
        src.correlation_id.clone()
    };
    prop_assert_eq!(&*got.correlation_id, id.as_str());
    prop_assert_eq!(got.transport, transport);
    prop_assert_eq!(got.late_ms, late_ms);
    Ok(())
}

/// The shape of any refusal: known codes, consistent counts and indices, and dead-letter
/// headers that stay one short line whatever the message held.
fn check_refusal(r: &Refusal) -> Result<(), TestCaseError> {
    let detail = r.detail();
    prop_assert!(
        !detail.contains(['\n', '\r']),
        "detail is not one line: {detail:?}"
    );
    let headers = r.code().len() + r.reasons().len() + r.indices_text().len() + detail.len();
    prop_assert!(
        headers < HEADER_BUDGET,
        "dead-letter headers weigh {headers} bytes: {detail:?}"
    );
    prop_assert_eq!(r.code(), r.first.code());
    prop_assert!(r.counts.contains_key(r.code()), "{:?}", r.counts);
    let all = RejectCode::all_str();
    prop_assert!(
        r.counts.iter().all(|(c, n)| all.contains(c) && *n >= 1),
        "{:?}",
        r.counts
    );
    prop_assert!(r.indices.len() <= MAX_INDICES, "{:?}", r.indices);
    prop_assert!(r.indices.windows(2).all(|w| w[0] < w[1]), "{:?}", r.indices);
    if r.total == 0 {
        // The whole message: not a batch, or a batch without vectors.
        prop_assert!(r.indices.is_empty(), "{:?}", r.indices);
        prop_assert_eq!(r.refused(), 1, "a whole message counts one");
    } else {
        prop_assert!(r.refused() >= 1 && r.refused() <= r.total as u64);
        prop_assert!(r.indices.iter().all(|&i| i < r.total), "{:?}", r.indices);
        prop_assert_eq!(
            r.indices.len() as u64,
            r.refused().min(MAX_INDICES as u64),
            "every refused vector has an index, up to the first {}",
            MAX_INDICES
        );
        let first = r.indices[0];
        prop_assert!(detail.starts_with(&format!("vector {first}: ")), "{detail:?}");
    }
    Ok(())
}

/// A valid encoding with a few bytes changed and possibly cut short.
fn mutated(mut bytes: Vec<u8>, edits: &[(Index, u8)], cut: Option<Index>) -> Vec<u8> {
    for (i, x) in edits {
        if !bytes.is_empty() {
            let n = i.index(bytes.len());
            bytes[n] = *x;
        }
    }
    if let Some(c) = cut
        && !bytes.is_empty()
    {
        bytes.truncate(c.index(bytes.len()));
    }
    bytes
}

/// Up to 64 KiB of noise, short noise, or a damaged real batch.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..=65_536),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        3 => (
            prop::collection::vec(feature_vector(), 0..4),
            prop::collection::vec((any::<Index>(), any::<u8>()), 0..6),
            any::<Option<Index>>(),
        )
            .prop_map(|(vectors, edits, cut)| {
                mutated(pb::FeatureVectorBatch { vectors }.encode_to_vec(), &edits, cut)
            }),
    ]
}

fn finite_f32() -> prop::num::f32::Any {
    prop::num::f32::POSITIVE
        | prop::num::f32::NEGATIVE
        | prop::num::f32::NORMAL
        | prop::num::f32::SUBNORMAL
        | prop::num::f32::ZERO
}

fn finite_f64() -> prop::num::f64::Any {
    prop::num::f64::POSITIVE
        | prop::num::f64::NEGATIVE
        | prop::num::f64::NORMAL
        | prop::num::f64::SUBNORMAL
        | prop::num::f64::ZERO
}

/// A vector every rule accepts, on time for a 60 s maximum age at `NOW`.
fn valid_vector() -> impl Strategy<Value = pb::FeatureVector> {
    let set_and_values = prop_oneof![
        4 => prop::collection::vec(finite_f32(), 3).prop_map(|v| ("ta-v1".to_string(), v)),
        1 => Just(("empty-v0".to_string(), Vec::new())),
    ];
    let bar = prop::option::of(
        (
            finite_f64(),
            finite_f64(),
            finite_f64(),
            finite_f64(),
            finite_f64(),
        )
            .prop_map(|(open, high, low, close, volume)| pb::Bar {
                open,
                high,
                low,
                close,
                volume,
            }),
    );
    (
        (
            prop_oneof![
                prop::sample::select(strings(&["AAPL", "MSFT", "BTCUSDT"])),
                "[A-Za-z0-9_-]{1,64}",
                r"\p{L}{1,16}",
            ],
            prop::sample::select(strings(&TIMEFRAMES)),
            set_and_values,
            prop_oneof![Just(String::new()), "[A-Z]{1,32}"],
        ),
        (
            (NOW - 59_000)..=(NOW + 5_000),
            0..=MAX_SEQUENCE,
            prop_oneof![Just(String::new()), "[ -~]{1,256}", r"\PC{1,16}"],
            any::<i64>(),
            bar,
        ),
    )
        .prop_map(
            |(
                (symbol, timeframe, (feature_set, values), exchange),
                (event_time_ms, sequence, correlation_id, published_at_ns, bar),
            )| pb::FeatureVector {
                symbol,
                timeframe,
                event_time_ms,
                sequence,
                feature_set,
                values,
                bar,
                exchange,
                correlation_id,
                published_at_ns,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the bytes: vectors or a refusal (or both), never a panic; "not a batch"
    /// exactly when prost says so; the refusal's headers one short line.
    #[test]
    fn test_any_payload_is_vectors_or_one_bounded_refusal(
        bytes in payload(),
        subject in prop::option::of(".{0,40}"),
        max_age_ms in prop::sample::select(vec![0u64, 60_000]),
        history in any::<bool>(),
    ) {
        let d = validator(max_age_ms).decode(&bytes, subject.as_deref(), Transport("nats"), NOW, history);
        prop_assert!(!d.vectors.is_empty() || d.refusal.is_some(), "neither vectors nor a refusal");
        for v in &d.vectors {
            check_accepted(v)?;
        }
        if let Some(r) = &d.refusal {
            check_refusal(r)?;
        }
        match (pb::FeatureVectorBatch::decode(bytes.as_slice()), &d.refusal) {
            (Err(e), None) => {
                return Err(TestCaseError::fail(format!("prost refused ({e}) but the codec accepted")));
            }
            (Err(_), Some(r)) => {
                prop_assert_eq!(r.code(), "decode_error");
                prop_assert!(d.vectors.is_empty());
                prop_assert_eq!(r.total, 0);
            }
            (Ok(batch), r) => {
                prop_assert!(r.as_ref().is_none_or(|r| r.code() != "decode_error"));
                if let Some(r) = r {
                    prop_assert_eq!(r.total, batch.vectors.len());
                }
                // Every vector is accepted or counted once; a batch without vectors counts one.
                let refused = r.as_ref().map_or(0, |r| r.refused());
                prop_assert_eq!(d.vectors.len() as u64 + refused, batch.vectors.len().max(1) as u64);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A batch is split exactly by the documented rules: the vectors that pass every check
    /// go on unchanged and in order, the others are counted once each in one refusal whose
    /// first reason is a fault of the first refused vector.
    #[test]
    fn test_a_batch_is_split_exactly_by_the_rules(c in case()) {
        let bytes = c.batch.encode_to_vec();
        let transport = Transport(c.transport);
        let d = validator(c.max_age_ms).decode(&bytes, c.subject.as_deref(), transport, NOW, c.history);
        let verdicts: Vec<BTreeSet<&'static str>> = c.batch.vectors.iter().map(|v| faults(v, &c)).collect();
        let good: Vec<&pb::FeatureVector> = c
            .batch
            .vectors
            .iter()
            .zip(&verdicts)
            .filter(|(_, f)| f.is_empty())
            .map(|(v, _)| v)
            .collect();
        let bad: Vec<usize> = verdicts
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.is_empty())
            .map(|(i, _)| i)
            .collect();

        prop_assert_eq!(d.vectors.len(), good.len(), "accepted; faults per vector {:?}", verdicts);
        for (got, src) in d.vectors.iter().zip(&good) {
            check_accepted(got)?;
            check_same_as_source(got, src, expected_late(src, &c), transport)?;
        }
        let total = c.batch.vectors.len();
        match &d.refusal {
            None => prop_assert!(total > 0 && bad.is_empty(), "no refusal; faults {:?}", verdicts),
            Some(r) => {
                check_refusal(r)?;
                if total == 0 {
                    prop_assert_eq!(r.code(), "invalid_field");
                    prop_assert_eq!(r.total, 0);
                } else {
                    prop_assert!(!bad.is_empty(), "refused a batch that passes every check: {:?}", r);
                    prop_assert_eq!(r.total, total);
                    prop_assert_eq!(r.refused(), bad.len() as u64);
                    prop_assert_eq!(d.vectors.len() as u64 + r.refused(), total as u64);
                    prop_assert_eq!(&r.indices[..], &bad[..bad.len().min(MAX_INDICES)]);
                    prop_assert!(
                        verdicts[bad[0]].contains(r.code()),
                        "first reason {} is not a fault of vector {}: {:?}",
                        r.code(),
                        bad[0],
                        verdicts[bad[0]]
                    );
                    // Per code: at least the vectors with that fault alone, at most those
                    // with it at all.
                    for code in RejectCode::all_str() {
                        let n = r.counts.get(code).copied().unwrap_or(0);
                        let could = verdicts.iter().filter(|f| f.contains(code)).count() as u64;
                        let must = verdicts.iter().filter(|f| f.len() == 1 && f.contains(code)).count() as u64;
                        prop_assert!(
                            must <= n && n <= could,
                            "{} counted {}, expected {}..={}; faults {:?}",
                            code, n, must, could, verdicts
                        );
                    }
                }
            }
        }
    }

    /// A valid batch survives prost unchanged, decodes without a refusal, and the accepted
    /// vectors written back out decode to the same vectors; each vector is also accepted on
    /// its own subject, with and without the symbol.
    #[test]
    fn test_a_valid_batch_stays_valid_through_re_encoding(
        vectors in prop::collection::vec(valid_vector(), 1..8),
    ) {
        let batch = pb::FeatureVectorBatch { vectors };
        let bytes = batch.encode_to_vec();
        prop_assert_eq!(&pb::FeatureVectorBatch::decode(bytes.as_slice()).unwrap(), &batch);
        let v = validator(60_000);
        let first = v.decode(&bytes, None, Transport("nats"), NOW, false);
        prop_assert!(first.refusal.is_none(), "{:?}", first.refusal);
        prop_assert_eq!(first.vectors.len(), batch.vectors.len());

        // The accepted vectors, written back out with the correlation id the codec gave them
        // (the domain vector keeps no feature set, exchange or bar: taken from the source).
        let again = pb::FeatureVectorBatch {
            vectors: first
                .vectors
                .iter()
                .zip(&batch.vectors)
                .map(|(got, src)| pb::FeatureVector {
                    symbol: got.key.symbol.to_string(),
                    timeframe: got.key.timeframe.to_string(),
                    event_time_ms: got.event_time_ms,
                    sequence: got.sequence,
                    feature_set: src.feature_set.clone(),
                    values: got.values.to_vec(),
                    bar: None,
                    exchange: src.exchange.clone(),
                    correlation_id: got.correlation_id.to_string(),
                    published_at_ns: got.published_at_ns,
                })
                .collect(),
        };
        let second = v.decode(&again.encode_to_vec(), None, Transport("nats"), NOW, false);
        prop_assert!(second.refusal.is_none(), "{:?}", second.refusal);
        prop_assert_eq!(second.vectors.len(), first.vectors.len());
        for (a, b) in first.vectors.iter().zip(&second.vectors) {
            prop_assert_eq!(&a.key, &b.key);
            prop_assert_eq!(a.sequence, b.sequence);
            prop_assert_eq!(a.event_time_ms, b.event_time_ms);
            prop_assert_eq!(bits(&a.values), bits(&b.values));
            prop_assert_eq!(&a.correlation_id, &b.correlation_id);
            prop_assert_eq!(a.published_at_ns, b.published_at_ns);
            prop_assert_eq!(a.late_ms, 0);
            prop_assert_eq!(b.late_ms, 0);
        }

        for src in &batch.vectors {
            let one = pb::FeatureVectorBatch { vectors: vec![src.clone()] }.encode_to_vec();
            for subject in [src.timeframe.clone(), format!("{}.{}", src.timeframe, src.symbol)] {
                let d = v.decode(&one, Some(subject.as_str()), Transport("nats"), NOW, false);
                prop_assert!(d.refusal.is_none(), "on {:?}: {:?}", subject, d.refusal);
                prop_assert_eq!(d.vectors.len(), 1);
            }
        }
    }

    /// Length-delimited framing: every framed message is found, a cut at a message boundary
    /// reads the messages before it, a cut inside one is an error; noise never panics.
    #[test]
    fn test_length_delimited_framing_finds_every_message_or_an_error(
        batches in prop::collection::vec(prop::collection::vec(feature_vector(), 0..3), 0..5),
        cut in any::<Index>(),
        noise in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let payloads: Vec<Vec<u8>> = batches
            .into_iter()
            .map(|vectors| pb::FeatureVectorBatch { vectors }.encode_to_vec())
            .collect();
        let mut file = Vec::new();
        let mut ends = vec![0usize];
        for p in &payloads {
            prost::encoding::encode_varint(p.len() as u64, &mut file);
            file.extend_from_slice(p);
            ends.push(file.len());
        }
        let parts = read_length_delimited(&file).unwrap();
        prop_assert_eq!(parts.len(), payloads.len());
        for (a, b) in parts.iter().zip(&payloads) {
            prop_assert_eq!(*a, b.as_slice());
        }

        let at = cut.index(file.len() + 1);
        match read_length_delimited(&file[..at]) {
            Ok(parts) => {
                let whole = ends.iter().position(|&e| e == at);
                prop_assert!(whole.is_some(), "cut at {} inside a message, yet {} read", at, parts.len());
                prop_assert_eq!(Some(parts.len()), whole);
            }
            Err(e) => prop_assert!(!ends.contains(&at), "cut at the boundary {} refused: {}", at, e),
        }

        if let Ok(parts) = read_length_delimited(&noise) {
            prop_assert!(parts.iter().map(|p| p.len()).sum::<usize>() <= noise.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// The workspace root: the shipped models and feature sets live there.
fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A config file that loads as is: the defaults, with the model folders found from here.
fn base_table() -> toml::Table {
    let mut t = toml::Table::new();
    set(
        &mut t,
        "service",
        "models_dir",
        toml::Value::String(root().join("models").display().to_string()),
    );
    set(
        &mut t,
        "service",
        "feature_sets_dir",
        toml::Value::String(root().join("models/feature_sets").display().to_string()),
    );
    t
}

/// `[section] key = value`, creating the section.
fn set(t: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    if let toml::Value::Table(s) = t
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
    {
        s.insert(key.to_string(), value);
    }
}

/// Every (section, key, default) of the config, read from the defaults themselves.
fn known_keys() -> Vec<(String, String, toml::Value)> {
    let known = toml::Table::try_from(Config::default()).unwrap();
    let mut out = Vec::new();
    for (section, v) in known {
        if let toml::Value::Table(t) = v {
            for (k, d) in t {
                out.push((section.clone(), k, d));
            }
        }
    }
    assert!(out.len() > 20, "the defaults name the keys: {out:?}");
    out
}

fn known_sections() -> Vec<String> {
    let s: BTreeSet<String> = known_keys().into_iter().map(|(s, _, _)| s).collect();
    s.into_iter().collect()
}

/// Words that are valid somewhere in the config and wrong elsewhere.
const WORDS: &[&str] = &[
    "",
    "cpu",
    "cuda",
    "cuda:0",
    "cuda:x",
    "auto",
    "tpu",
    "weighted_mean",
    "majority",
    "stacking",
    "omit",
    "neutral",
    "uniform",
    "file",
    "memory",
    "tape",
    "nats://127.0.0.1:4222",
    "http://x",
    "localhost:9092",
    "augur.features",
    "core",
    "a.b",
    "a*b",
    "a b",
    "127.0.0.1:0",
    "1m",
    "lstm-direction",
    "ensemble-meta",
];

/// Weight keys: members, the stacker and strangers.
const WEIGHT_KEYS: &[&str] = &[
    "lstm-direction",
    "cnn-pattern",
    "xgb-direction",
    "ensemble-meta",
    "nobody",
];

fn scalar() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        any::<bool>().prop_map(toml::Value::Boolean),
        any::<f64>().prop_map(toml::Value::Float),
        ".{0,12}".prop_map(toml::Value::String),
    ]
}

/// A value of the default's type (near it, in range, or anything of that type), or now and
/// then a scalar of any type.
fn value_like(default: toml::Value) -> BoxedStrategy<toml::Value> {
    use toml::Value as V;
    let typed: BoxedStrategy<V> = match default {
        V::Integer(d) => prop_oneof![
            3 => Just(d),
            3 => 0..=d.saturating_mul(2).max(8),
            1 => -3i64..=3,
            1 => any::<i64>(),
        ]
        .prop_map(V::Integer)
        .boxed(),
        V::Float(d) => prop_oneof![
            3 => Just(d),
            3 => 0.0..=1.0f64,
            1 => 1.0..100.0f64,
            1 => any::<f64>(),
        ]
        .prop_map(V::Float)
        .boxed(),
        V::String(d) => prop_oneof![
            3 => Just(d),
            3 => prop::sample::select(strings(WORDS)),
            1 => ".{0,16}",
        ]
        .prop_map(V::String)
        .boxed(),
        V::Boolean(_) => any::<bool>().prop_map(V::Boolean).boxed(),
        V::Array(d) => prop_oneof![
            2 => Just(d),
            2 => prop::collection::vec(prop::sample::select(strings(WORDS)), 0..4)
                .prop_map(|v| v.into_iter().map(V::String).collect::<Vec<_>>()),
            1 => prop::collection::vec(scalar(), 0..3),
        ]
        .prop_map(V::Array)
        .boxed(),
        V::Table(_) => prop::collection::btree_map(
            prop::sample::select(strings(WEIGHT_KEYS)),
            prop_oneof![4 => 0.0..5.0f64, 1 => any::<f64>()],
            0..3,
        )
        .prop_map(|m| V::Table(m.into_iter().map(|(k, w)| (k, V::Float(w))).collect()))
        .boxed(),
        other => Just(other).boxed(),
    };
    prop_oneof![9 => typed, 1 => scalar()].boxed()
}

/// Up to four (section, key, value) settings over the known keys.
fn overrides() -> impl Strategy<Value = Vec<(String, String, toml::Value)>> {
    prop::collection::vec(
        prop::sample::select(known_keys())
            .prop_flat_map(|(s, k, d)| value_like(d).prop_map(move |v| (s.clone(), k.clone(), v))),
        0..5,
    )
}

/// A key no section has, in a known section or in a section of its own.
fn unknown_key() -> impl Strategy<Value = Option<(String, String)>> {
    let mut sections = known_sections();
    sections.push("bogus".into());
    prop::option::of((prop::sample::select(sections), "zz_[a-z]{1,6}"))
}

/// Equal as config values: an integer written for a float field reads back as that float.
fn same(a: &toml::Value, b: &toml::Value) -> bool {
    use toml::Value as V;
    match (a, b) {
        (V::Integer(i), V::Float(f)) | (V::Float(f), V::Integer(i)) => *i as f64 == *f,
        (V::Array(x), V::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (V::Table(x), V::Table(y)) => {
            x.len() == y.len() && x.iter().all(|(k, a)| y.get(k).is_some_and(|b| same(a, b)))
        }
        _ => a == b,
    }
}

fn check_problems(e: &ConfigError) -> Result<(), TestCaseError> {
    prop_assert!(!e.0.is_empty(), "an error that lists no problem");
    prop_assert!(
        e.0.iter().all(|p| !p.trim().is_empty()),
        "a blank problem: {:?}",
        e.0
    );
    prop_assert!(e.to_string().starts_with("invalid configuration:"), "{}", e);
    Ok(())
}

/// Section headers, known keys with any value, and junk lines.
fn toml_ish() -> impl Strategy<Value = String> {
    let keys: Vec<String> = known_keys().into_iter().map(|(_, k, _)| k).collect();
    let value_text = prop_oneof![
        3 => scalar().prop_map(|v| v.to_string()),
        1 => "[^\n]{0,12}",
        1 => prop::sample::select(strings(&[
            "[]", "{}", "[1, \"a\"]", "{ x = 1 }", "nan", "-inf", "1979-05-27T07:32:00Z",
            "\"\"\"", "'", "0x1F", "1_000", "1e400", "[[1]]", "{ a = { b = [] } }",
        ])),
    ];
    let line = prop_oneof![
        2 => prop::sample::select(known_sections()).prop_map(|s| format!("[{s}]")),
        4 => (prop::sample::select(keys), value_text).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => r"[a-z_.\[\]]{1,16} = [^\n]{0,24}",
        1 => ".{0,30}",
    ];
    prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text and environment: a config with no problems, or an error listing problems;
    /// never a panic.
    #[test]
    fn test_any_config_text_is_a_config_or_a_list_of_problems(
        text in prop_oneof![3 => toml_ish(), 1 => ".{0,300}", 1 => "[ -~\n]{0,400}"],
        env in prop::collection::vec(
            (prop_oneof!["AUGUR_[A-Za-z_]{0,20}", ".{0,12}"], ".{0,20}"),
            0..4,
        ),
    ) {
        match Config::from_sources(&text, env.into_iter()) {
            Err(e) => check_problems(&e)?,
            Ok(cfg) => {
                prop_assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
                prop_assert!(cfg.runtime_problems().is_empty(), "{:?}", cfg.runtime_problems());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A config file over the real keys: refused with every problem listed (every unknown key
    /// by its path), or accepted with no problem, every value of the file in the config, and
    /// the config written back out loading to itself.
    #[test]
    fn test_a_config_file_is_loaded_or_refused_with_every_problem_listed(
        ov in overrides(),
        unknown in unknown_key(),
    ) {
        let mut table = base_table();
        for (s, k, v) in &ov {
            set(&mut table, s, k, v.clone());
        }
        if let Some((s, k)) = &unknown {
            set(&mut table, s, k, toml::Value::Integer(1));
        }
        let text = toml::to_string(&table).unwrap();
        match Config::from_sources(&text, std::iter::empty()) {
            Err(e) => {
                check_problems(&e)?;
                if let Some((s, k)) = &unknown {
                    let want = if s == "bogus" {
                        "unknown key bogus".to_string()
                    } else {
                        format!("unknown key {s}.{k}")
                    };
                    prop_assert!(e.0.contains(&want), "{:?} not in {:?}", want, e.0);
                }
            }
            Ok(cfg) => {
                prop_assert!(unknown.is_none(), "unknown key {:?} accepted:\n{}", unknown, text);
                prop_assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
                let shown = toml::Table::try_from(&cfg).unwrap();
                for (s, k, _) in &ov {
                    let want = table.get(s.as_str()).and_then(|t| t.get(k.as_str())).unwrap();
                    let got = shown.get(s.as_str()).and_then(|t| t.get(k.as_str()));
                    prop_assert!(
                        got.is_some_and(|got| same(want, got)),
                        "{}.{}: the file says {}, the config has {:?}",
                        s, k, want, got
                    );
                }
                let again = Config::from_sources(&toml::to_string(&cfg).unwrap(), std::iter::empty());
                prop_assert_eq!(again.as_ref().ok(), Some(&cfg), "{:?}", again.as_ref().err());
            }
        }
    }

    /// The environment wins over the file, its section and key in any case; a value it
    /// cannot give is a problem of that section.
    #[test]
    fn test_the_environment_overrides_the_file(
        file_batch in 0i64..2000,
        env in prop_oneof![
            3 => (-5i64..2000).prop_map(|n| n.to_string()),
            1 => "[a-z]{1,6}",
            1 => Just("\"8\"".to_string()),
        ],
        mixed_case in any::<bool>(),
    ) {
        let mut table = base_table();
        set(&mut table, "executor", "max_batch", toml::Value::Integer(file_batch));
        let key = if mixed_case { "AUGUR_Executor__Max_Batch" } else { "AUGUR_EXECUTOR__MAX_BATCH" };
        let vars = vec![
            (key.to_string(), env.clone()),
            ("AUGUR_NOT_A_SECTION".to_string(), "x".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let r = Config::from_sources(&toml::to_string(&table).unwrap(), vars.into_iter());
        match env.parse::<usize>().ok().filter(|n| (1..=1024).contains(n)) {
            Some(n) => match r {
                Ok(cfg) => prop_assert_eq!(cfg.executor.max_batch, n),
                Err(e) => return Err(TestCaseError::fail(format!("{env:?} refused: {:?}", e.0))),
            },
            None => match r {
                Ok(cfg) => {
                    return Err(TestCaseError::fail(format!(
                        "{env:?} accepted as max_batch {}",
                        cfg.executor.max_batch
                    )));
                }
                Err(e) => prop_assert!(e.0.iter().any(|p| p.contains("executor")), "{:?}", e.0),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP bodies
// ---------------------------------------------------------------------------------------------

/// Values JSON carries exactly (quarters).
fn quarter() -> impl Strategy<Value = f32> {
    (-4000i32..4000).prop_map(|i| i as f32 / 4.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// `POST /api/v1/predict` (JSON): `windows` required, `method` optional and one of the
    /// three, nothing else; what is accepted is what was sent.
    #[test]
    fn test_a_predict_body_has_windows_and_an_optional_method_only(
        windows in prop::collection::vec(prop::collection::vec(prop::collection::vec(quarter(), 0..4), 0..4), 0..3),
        method in prop::option::of(prop::sample::select(strings(&[
            "weighted_mean", "majority", "stacking", "median", "WeightedMean", "",
        ]))),
        omit_windows in prop::bool::weighted(0.2),
        extra in prop::option::of("x_[a-z]{1,6}"),
    ) {
        let mut body = serde_json::Map::new();
        if !omit_windows {
            body.insert("windows".into(), json!(windows));
        }
        if let Some(m) = &method {
            body.insert("method".into(), json!(m));
        }
        if let Some(k) = &extra {
            body.insert(k.clone(), json!(1));
        }
        let bytes = serde_json::to_vec(&Json::Object(body)).unwrap();
        let known_method = method
            .as_deref()
            .is_none_or(|m| ["weighted_mean", "majority", "stacking"].contains(&m));
        let valid = !omit_windows && extra.is_none() && known_method;
        match serde_json::from_slice::<PredictRequest>(&bytes) {
            Ok(req) => {
                prop_assert!(valid, "accepted {}", String::from_utf8_lossy(&bytes));
                prop_assert_eq!(&req.windows, &windows);
                prop_assert_eq!(req.method.map(|m| m.as_str()), method.as_deref());
            }
            Err(e) => prop_assert!(!valid, "refused ({}): {}", e, String::from_utf8_lossy(&bytes)),
        }
    }

    /// `PATCH /api/v1/config`: the sections it may change and `models` (`enabled`, `reset`),
    /// nothing else; a null section is no change.
    #[test]
    fn test_a_config_patch_names_known_sections_only(
        sections in prop::collection::btree_map(
            prop::sample::select(strings(&["aggregator", "breaker", "executor", "bogus"])),
            prop::sample::select(vec![json!({}), json!({"deadline_ms": 5}), json!(null), json!(3), json!("x")]),
            0..4,
        ),
        models in prop::option::of((
            prop::collection::btree_map("[a-z-]{1,12}", any::<bool>(), 0..3),
            prop::collection::vec("[a-z-]{1,12}", 0..3),
            prop::sample::select(strings(&["", "enable", "reset_all"])),
        )),
    ) {
        let mut body = serde_json::Map::new();
        for (k, v) in &sections {
            body.insert(k.clone(), v.clone());
        }
        if let Some((enabled, reset, extra)) = &models {
            let mut m = serde_json::Map::new();
            m.insert("enabled".into(), json!(enabled));
            m.insert("reset".into(), json!(reset));
            if !extra.is_empty() {
                m.insert(extra.clone(), json!(true));
            }
            body.insert("models".into(), Json::Object(m));
        }
        let body = Json::Object(body);
        let valid = !sections.contains_key("bogus")
            && models.as_ref().is_none_or(|(_, _, extra)| extra.is_empty());
        match serde_json::from_value::<ConfigPatch>(body.clone()) {
            Ok(p) => {
                prop_assert!(valid, "accepted {}", body);
                let given = |k: &str| sections.get(k).is_some_and(|v| !v.is_null());
                prop_assert_eq!(p.aggregator.is_some(), given("aggregator"));
                prop_assert_eq!(p.breaker.is_some(), given("breaker"));
                prop_assert_eq!(p.executor.is_some(), given("executor"));
                match (&p.models, &models) {
                    (Some(got), Some((enabled, reset, _))) => {
                        prop_assert_eq!(&got.enabled, enabled);
                        prop_assert_eq!(&got.reset, reset);
                    }
                    (None, None) => {}
                    (got, want) => {
                        return Err(TestCaseError::fail(format!("models {got:?}, sent {want:?}")));
                    }
                }
            }
            Err(e) => prop_assert!(!valid, "refused ({}): {}", e, body),
        }
    }
}

//! Any bytes as one input message for the codec (`Validator::decode`): vectors or one refusal,
//! never a panic, and the promises of service/tests/props.rs whatever the bytes:
//! - "not a FeatureVectorBatch" exactly when prost says so (no vectors, `decode_error`);
//! - otherwise every vector of the batch is accepted or counted once in the refusal
//!   (accepted + refused == batch length, or 1 for a batch without vectors);
//! - the refusal's dead-letter headers are one short line, its counts and indices consistent;
//! - an accepted vector obeys every rule (finite values of a known count, bounded subject-safe
//!   identities, event time and sequence in range, a correlation id).
//!
//! The first byte of the input picks the circumstances, the rest is the payload: bit 0 the
//! message comes from a durable log (`history`), bit 1 a 60 s maximum age (else none), bits
//! 2-4 the subject it arrived on ([`SUBJECTS`]), bits 5-6 the transport.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use augur_actors::types::{Transport, Vector};
use augur_service::codec::{
    MAX_CORRELATION_ID, MAX_INDICES, MAX_SEQUENCE, MAX_SYMBOL, MAX_TOKEN, Refusal, RejectCode, Validator,
};
use augur_service::pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// "Now" for every decode (the replay seeds are older: stale or late, by the control byte).
const NOW: i64 = 1_700_000_000_000;
/// The timeframes the shipped config.toml serves.
const TIMEFRAMES: [&str; 6] = ["1m", "5m", "15m", "1h", "4h", "1d"];
/// What the subject names after the prefix; `None`: a transport without subjects.
const SUBJECTS: [Option<&str>; 8] = [
    None,
    Some("1d"),
    Some("1d.AAPL"),
    Some("1d.MSFT"),
    Some("1m"),
    Some("1m.AAPL.X"),
    Some(""),
    Some("."),
];
const TRANSPORTS: [&str; 4] = ["nats", "kafka", "jetstream", "http"];
/// The most a dead letter's headers (reason, reasons, indices, detail) may weigh together.
const HEADER_BUDGET: usize = 4096;

/// The rules every input is decoded under, built once.
struct Rules {
    /// [no maximum age, 60 s].
    validators: [Validator; 2],
    /// The value counts of the feature sets.
    counts: Vec<usize>,
}

/// The shipped ta-v1 feature count (20), read from its specification so that the replay seeds
/// are valid; `empty-v0` has none, so an empty vector can be valid too.
fn rules() -> &'static Rules {
    static R: OnceLock<Rules> = OnceLock::new();
    R.get_or_init(|| {
        let ta_v1 = toml::from_str::<toml::Table>(include_str!("../../models/feature_sets/ta-v1.toml"))
            .ok()
            .and_then(|t| t.get("count").and_then(toml::Value::as_integer))
            .and_then(|c| usize::try_from(c).ok())
            .unwrap_or(20);
        let sets = HashMap::from([("ta-v1".to_string(), ta_v1), ("empty-v0".to_string(), 0)]);
        let counts = sets.values().copied().collect();
        let timeframes: Vec<String> = TIMEFRAMES.iter().map(|t| t.to_string()).collect();
        let v = Validator::new(sets, timeframes, 0);
        Rules {
            validators: [v.clone(), v.with_max_age(60_000)],
            counts,
        }
    })
}

fn check_accepted(v: &Vector, transport: Transport, history: bool, counts: &[usize]) {
    assert!(v.values.iter().all(|x| x.is_finite()), "{:?}", v.values);
    assert!(counts.contains(&v.values.len()), "{} values", v.values.len());
    for (field, s, max) in [
        ("symbol", &*v.key.symbol, MAX_SYMBOL),
        ("timeframe", &*v.key.timeframe, MAX_TOKEN),
    ] {
        assert!(!s.is_empty() && s.len() <= max, "{field} {s:?}");
        assert!(
            !s.chars()
                .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '.' | '*' | '>')),
            "{field} {s:?} is not a subject token"
        );
    }
    assert!(TIMEFRAMES.contains(&&*v.key.timeframe), "{:?}", v.key.timeframe);
    assert!(v.event_time_ms >= 0, "{}", v.event_time_ms);
    assert!(v.sequence <= MAX_SEQUENCE, "{}", v.sequence);
    assert!(
        !v.correlation_id.is_empty()
            && v.correlation_id.len() <= MAX_CORRELATION_ID
            && !v.correlation_id.chars().any(|c| c.is_control()),
        "{:?}",
        v.correlation_id
    );
    assert_eq!(v.transport, transport);
    if !history {
        // Live: an old vector is refused as stale, never predicted late.
        assert_eq!(v.late_ms, 0);
    }
    assert!(v.ack.is_none());
}

fn check_refusal(r: &Refusal) {
    let detail = r.detail();
    assert!(!detail.contains(['\n', '\r']), "detail is not one line: {detail:?}");
    let headers = r.code().len() + r.reasons().len() + r.indices_text().len() + detail.len();
    assert!(headers < HEADER_BUDGET, "dead-letter headers weigh {headers} bytes: {detail:?}");
    assert_eq!(r.code(), r.first.code());
    assert!(r.counts.contains_key(r.code()), "{:?}", r.counts);
    let all = RejectCode::all_str();
    assert!(r.counts.iter().all(|(c, n)| all.contains(c) && *n >= 1), "{:?}", r.counts);
    assert!(r.indices.len() <= MAX_INDICES, "{:?}", r.indices);
    assert!(r.indices.windows(2).all(|w| w[0] < w[1]), "{:?}", r.indices);
    if r.total == 0 {
        // The whole message: not a batch, or a batch without vectors.
        assert!(r.indices.is_empty(), "{:?}", r.indices);
        assert_eq!(r.refused(), 1, "a whole message counts one");
    } else {
        assert!(r.refused() >= 1 && r.refused() <= r.total as u64, "{:?}", r);
        assert!(r.indices.iter().all(|&i| i < r.total), "{:?}", r.indices);
        assert_eq!(
            r.indices.len() as u64,
            r.refused().min(MAX_INDICES as u64),
            "every refused vector has an index, up to the first {MAX_INDICES}"
        );
        let first = r.indices[0];
        assert!(detail.starts_with(&format!("vector {first}: ")), "{detail:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let (control, payload) = match data.split_first() {
        Some((c, rest)) => (*c, rest),
        None => (0, data),
    };
    let history = control & 1 != 0;
    let rules = rules();
    let validator = &rules.validators[usize::from((control >> 1) & 1)];
    let subject = SUBJECTS[usize::from((control >> 2) & 7)];
    let transport = Transport(TRANSPORTS[usize::from((control >> 5) & 3)]);

    let d = validator.decode(payload, subject, transport, NOW, history);

    assert!(!d.vectors.is_empty() || d.refusal.is_some(), "neither vectors nor a refusal");
    for v in &d.vectors {
        check_accepted(v, transport, history, &rules.counts);
    }
    if let Some(r) = &d.refusal {
        check_refusal(r);
    }
    match (pb::FeatureVectorBatch::decode(payload), &d.refusal) {
        (Err(e), None) => panic!("prost refused ({e}) but the codec accepted"),
        (Err(_), Some(r)) => {
            assert_eq!(r.code(), "decode_error");
            assert!(d.vectors.is_empty());
            assert_eq!(r.total, 0);
        }
        (Ok(batch), r) => {
            assert!(r.as_ref().is_none_or(|r| r.code() != "decode_error"), "{r:?}");
            if let Some(r) = r {
                assert_eq!(r.total, batch.vectors.len());
            }
            // Every vector is accepted or counted once; a batch without vectors counts one.
            let refused = r.as_ref().map_or(0, |r| r.refused());
            assert_eq!(
                d.vectors.len() as u64 + refused,
                batch.vectors.len().max(1) as u64,
                "accepted + refused is not the batch length"
            );
        }
    }
});

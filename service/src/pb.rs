//! The wire contract, generated from `proto/augur.proto` by `build.rs`.
#![allow(clippy::all, missing_docs)]
include!(concat!(env!("OUT_DIR"), "/augur.v1.rs"));

/// The wire contract as a serialized FileDescriptorSet (built by build.rs with protox), for
/// peers in other languages (the Python benchmark baseline builds its classes from it).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/augur.fds"));

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn vector() -> FeatureVector {
        FeatureVector {
            symbol: "AAPL".into(),
            timeframe: "1d".into(),
            event_time_ms: 1_356_998_400_000,
            sequence: 42,
            feature_set: "ta-v1".into(),
            values: vec![0.5, -1.25, f32::MIN_POSITIVE],
            bar: Some(Bar {
                open: 1.0,
                high: 2.0,
                low: 0.5,
                close: 1.5,
                volume: 1e6,
            }),
            exchange: "NASDAQ".into(),
            correlation_id: "c-1".into(),
            published_at_ns: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn test_feature_vector_batch_round_trips() {
        let batch = FeatureVectorBatch {
            vectors: vec![vector(), FeatureVector::default()],
        };
        let bytes = batch.encode_to_vec();
        assert_eq!(FeatureVectorBatch::decode(bytes.as_slice()).unwrap(), batch);
    }

    #[test]
    fn test_ensemble_prediction_round_trips_with_members_and_negative_signal() {
        let p = EnsemblePrediction {
            event_id: "5f0c".into(),
            symbol: "AAPL".into(),
            timeframe: "1d".into(),
            event_time_ms: 1,
            sequence: 2,
            direction: Direction::Short as i32,
            confidence: 0.6,
            probabilities: vec![0.6, 0.3, 0.1],
            members: vec![ModelPrediction {
                model_id: "lstm-direction".into(),
                model_version: "1".into(),
                model_kind: "lstm".into(),
                probabilities: vec![0.6, 0.3, 0.1],
                direction: Direction::Short as i32,
                confidence: 0.6,
                fallback: true,
                inference_us: 120,
                batch_size: 8,
                contributions: vec![FeatureContribution {
                    feature: "rsi_14[t-1]".into(),
                    value: -0.25,
                }],
                forecasts: vec![HorizonForecast {
                    horizon_bars: 5,
                    expected_return: 0.001,
                    sigma: 0.02,
                    price: 101.5,
                    ..Default::default()
                }],
                patterns: vec![PatternSignal {
                    name: "double_top".into(),
                    probability: 0.7,
                }],
            }],
            models_expected: 3,
            models_used: 1,
            method: "weighted_mean".into(),
            correlation_id: "c-1".into(),
            feature_published_at_ns: 5,
            published_at_ns: 6,
            service_version: "0.1.0".into(),
            signal: -1,
            late_ms: 7,
        };
        let bytes = p.encode_to_vec();
        assert_eq!(EnsemblePrediction::decode(bytes.as_slice()).unwrap(), p);
    }

    /// Field numbers are an API: a hand-encoded message must land in the named fields.
    #[test]
    fn test_field_numbers_match_the_contract() {
        // field 4 (sequence, varint) = 7; field 17 (signal, sint32 zigzag) = -1 -> 1
        let fv = FeatureVector::decode(&[0x20, 0x07][..]).unwrap();
        assert_eq!(fv.sequence, 7);
        let ep = EnsemblePrediction::decode(&[0x88, 0x01, 0x01][..]).unwrap();
        assert_eq!(ep.signal, -1);
        // field 10 (published_at_ns, varint)
        let fv = FeatureVector::decode(&[0x50, 0x05][..]).unwrap();
        assert_eq!(fv.published_at_ns, 5);
    }

    #[test]
    fn test_garbage_is_a_decode_error_not_a_panic() {
        assert!(FeatureVectorBatch::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}

//! Any bytes as the body of `POST /api/v1/predict` (`PredictRequest`) and of
//! `PATCH /api/v1/config` (`ConfigPatch`): parsed or refused, never a panic, and what is parsed
//! is what was sent (the promises of service/tests/props.rs):
//! - a body either type accepts is valid JSON;
//! - `PredictRequest`: `windows` (required) and `method` (optional), nothing else, and the
//!   windows and method are the ones sent;
//! - `ConfigPatch`: `aggregator`, `breaker`, `executor` and `models` (`enabled`, `reset`) only,
//!   a section present exactly when it is sent and not null.
//!
//! serde also reads a struct from a JSON array of its fields in order (`[windows, method]`):
//! such a body is accepted, and only its length is checked.
//! The checks behind the handlers (`check_window`, `merge`) are private to the actix handlers
//! and are covered by the end-to-end HTTP tests instead.
#![no_main]

use augur_service::http::{ConfigPatch, PredictRequest};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// A section is sent when its key is there with a value other than null.
fn sent(o: &Map<String, Value>, key: &str) -> bool {
    o.get(key).is_some_and(|v| !v.is_null())
}

fn check_predict(req: &PredictRequest, json: &Value) {
    match json {
        Value::Object(o) => {
            assert!(
                o.keys().all(|k| k == "windows" || k == "method"),
                "unknown keys accepted: {:?}",
                o.keys().collect::<Vec<_>>()
            );
            let windows = o.get("windows").and_then(Value::as_array);
            assert_eq!(windows.map(Vec::len), Some(req.windows.len()), "windows");
            for (got, body) in req.windows.iter().zip(windows.into_iter().flatten()) {
                let rows = body.as_array().map(Vec::len);
                assert_eq!(rows, Some(got.len()), "rows of a window");
            }
            match (req.method, o.get("method")) {
                (None, None | Some(Value::Null)) => {}
                (Some(m), Some(Value::String(s))) => assert_eq!(m.as_str(), s),
                // serde reads a unit variant from `{"majority": null}` too.
                (Some(m), Some(Value::Object(v))) => assert!(v.contains_key(m.as_str()), "{v:?}"),
                (got, body) => panic!("method {got:?}, sent {body:?}"),
            }
        }
        Value::Array(a) => assert!((1..=2).contains(&a.len()), "{} fields", a.len()),
        other => panic!("a predict body that is not an object: {other}"),
    }
}

fn check_patch(p: &ConfigPatch, json: &Value) {
    match json {
        Value::Object(o) => {
            const KNOWN: [&str; 4] = ["aggregator", "breaker", "executor", "models"];
            assert!(
                o.keys().all(|k| KNOWN.contains(&k.as_str())),
                "unknown keys accepted: {:?}",
                o.keys().collect::<Vec<_>>()
            );
            assert_eq!(p.aggregator.is_some(), sent(o, "aggregator"), "aggregator");
            assert_eq!(p.breaker.is_some(), sent(o, "breaker"), "breaker");
            assert_eq!(p.executor.is_some(), sent(o, "executor"), "executor");
            assert_eq!(p.models.is_some(), sent(o, "models"), "models");
            if let (Some(models), Some(Value::Object(m))) = (&p.models, o.get("models")) {
                assert!(
                    m.keys().all(|k| k == "enabled" || k == "reset"),
                    "unknown keys accepted in models: {:?}",
                    m.keys().collect::<Vec<_>>()
                );
                if let Some(Value::Object(e)) = m.get("enabled") {
                    assert_eq!(models.enabled.len(), e.len(), "models.enabled");
                }
                if let Some(Value::Array(r)) = m.get("reset") {
                    assert_eq!(models.reset.len(), r.len(), "models.reset");
                }
            }
        }
        Value::Array(a) => assert!(a.len() <= 4, "{} fields", a.len()),
        other => panic!("a config patch that is not an object: {other}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let json = serde_json::from_slice::<Value>(data);
    if let Ok(req) = serde_json::from_slice::<PredictRequest>(data) {
        match &json {
            Ok(v) => check_predict(&req, v),
            Err(e) => panic!("a predict body that is not JSON ({e}) was accepted"),
        }
    }
    if let Ok(patch) = serde_json::from_slice::<ConfigPatch>(data) {
        match &json {
            Ok(v) => check_patch(&patch, v),
            Err(e) => panic!("a config patch that is not JSON ({e}) was accepted"),
        }
    }
});

//! The HTTP actor through actix's in-process test service: health, config (bad JSON, unknown
//! keys, out-of-range values, tokens, oversized bodies), models, predict (JSON and
//! protobuf, checked against replay) and `/openapi.json` (every route served is documented,
//! and nothing else; 405 with `Allow` for an undocumented method). scripts/schemathesis.sh
//! (tests/schemathesis.rs) fuzzes the running service through that document.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::sync::{Arc, RwLock};
use std::time::Instant;

use actix_web::{App, test};
use augur_service::config::Config;
use augur_service::http::{AppState, configure};
use augur_service::pb;
use prost::Message;
use serde_json::{Value, json};

async fn state(token: &str) -> AppState {
    let mut cfg = common::config("nats://unused:4222");
    cfg.http.token = token.into();
    let pipeline = augur_service::service::build_pipeline(&cfg, vec![])
        .await
        .unwrap();
    AppState {
        pipeline,
        config: Arc::new(RwLock::new(cfg)),
        metrics: augur_service::telemetry::install(),
        started: Instant::now(),
        buses: Vec::new(),
        stopping: Default::default(),
        oip: Default::default(),
        access: None,
    }
}

macro_rules! app {
    ($st:expr) => {
        test::init_service(App::new().configure(|c| configure(c, $st.clone(), 64 * 1024))).await
    };
}

#[actix_web::test]
async fn test_health_and_readiness_report_models_loaded() {
    let st = state("").await;
    let app = app!(st);
    for path in [
        "/health/live",
        "/v2/health/live",
        "/health/ready",
        "/v2/health/ready",
    ] {
        let r = test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
        assert_eq!(r.status(), 200, "{path}");
    }
    let v: Value =
        test::call_and_read_body_json(&app, test::TestRequest::get().uri("/api/v1/health").to_request())
            .await;
    assert_eq!(v["status"], "Running");
    let ids: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["lstm-direction", "cnn-pattern", "xgb-direction", "ensemble-meta"],
        "the members and the stacker"
    );
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let v: Value =
        test::call_and_read_body_json(&app, test::TestRequest::get().uri("/api/v1/models").to_request())
            .await;
    let m = &v["models"][0];
    for k in [
        "id",
        "version",
        "family",
        "kind",
        "timeframes",
        "device",
        "state",
        "circuit",
        "calls",
        "failures",
        "latency_us",
    ] {
        assert!(!m[k].is_null(), "models[0].{k} missing: {m}");
    }
    assert_eq!(m["circuit"], "closed");
    assert_eq!((&m["family"], &m["kind"]), (&json!("lstm"), &json!("onnx")));
    let x = &v["models"][2];
    assert_eq!(
        (&x["family"], &x["kind"]),
        (&json!("xgboost"), &json!("xgboost-json"))
    );
}

#[actix_web::test]
async fn test_config_is_shown_with_the_token_masked() {
    let st = state("s3cret").await;
    let app = app!(st);
    let v: Value =
        test::call_and_read_body_json(&app, test::TestRequest::get().uri("/api/v1/config").to_request())
            .await;
    assert_eq!(v["http"]["token"], "***");
    assert_eq!(v["aggregator"]["method"], "weighted_mean");
}

#[actix_web::test]
async fn test_config_patch_requires_the_token_and_validates_everything() {
    let st = state("s3cret").await;
    let app = app!(st);
    let patch = |body: &str, token: Option<&str>| {
        let mut r = test::TestRequest::patch()
            .uri("/api/v1/config")
            .insert_header(("content-type", "application/json"));
        if let Some(t) = token {
            r = r.insert_header(("authorization", format!("Bearer {t}")));
        }
        r.set_payload(body.to_string()).to_request()
    };
    let ok = r#"{"aggregator": {"weights": {"lstm-direction": 2.0}}}"#;
    assert_eq!(
        test::call_service(&app, patch(ok, None)).await.status(),
        401,
        "missing token"
    );
    assert_eq!(
        test::call_service(&app, patch(ok, Some("nope"))).await.status(),
        401,
        "wrong token"
    );
    let r = test::call_service(&app, patch("{not json", Some("s3cret"))).await;
    assert_eq!(r.status(), 400, "bad JSON");
    let r = test::call_service(
        &app,
        patch(
            r#"{"aggregator": {"methd": "majority"}, "bogus": 1}"#,
            Some("s3cret"),
        ),
    )
    .await;
    assert_eq!(r.status(), 400, "unknown keys");
    let r = test::call_service(
        &app,
        patch(r#"{"executor": {"max_batch": 0}, "breaker": {"failure_rate": 3.0}, "aggregator": {"deadline_ms": 0}}"#, Some("s3cret")),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = test::read_body_json(r).await;
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 3, "every problem listed: {problems:?}");
    // nothing was applied by the failed patches
    assert!(st.pipeline.aggregator_config.read().unwrap().weights.is_empty());
    let r = test::call_service(&app, patch(ok, Some("s3cret"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        st.pipeline
            .aggregator_config
            .read()
            .unwrap()
            .weight("lstm-direction"),
        2.0
    );
    let r = test::call_service(
        &app,
        patch(
            r#"{"models": {"enabled": {"cnn-pattern": false}, "reset": ["xgb-direction"]}}"#,
            Some("s3cret"),
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = test::call_service(
        &app,
        patch(r#"{"models": {"enabled": {"nobody": false}}}"#, Some("s3cret")),
    )
    .await;
    assert_eq!(r.status(), 400);
}

#[actix_web::test]
async fn test_oversized_body_is_refused() {
    let st = state("").await;
    let app = app!(st);
    let big = format!("{{\"windows\": [[[{}]]]}}", vec!["0.0"; 40_000].join(","));
    let r = test::call_service(
        &app,
        test::TestRequest::patch()
            .uri("/api/v1/config")
            .insert_header(("content-type", "application/json"))
            .set_payload(big.clone())
            .to_request(),
    )
    .await;
    assert_eq!(r.status(), 413);
    let r = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/api/v1/predict")
            .set_payload(big)
            .to_request(),
    )
    .await;
    assert_eq!(r.status(), 413);
}

#[actix_web::test]
async fn test_predict_json_and_protobuf_agree_with_replay() {
    let st = state("").await;
    let app = app!(st);
    // 40 real AAPL vectors; replay them to get the reference prediction for the last one.
    let aapl: Vec<pb::FeatureVector> = common::real_vectors()
        .into_iter()
        .filter(|v| v.symbol == "AAPL")
        .take(40)
        .collect();
    let mut file = Vec::new();
    for v in &aapl {
        pb::FeatureVectorBatch {
            vectors: vec![v.clone()],
        }
        .encode_length_delimited(&mut file)
        .unwrap();
    }
    let cfg: Config = st.config.read().unwrap().clone();
    let want = augur_service::service::replay(&cfg, &file).await.unwrap();
    let last = want.predictions.last().unwrap().clone();
    assert_eq!(last.sequence, aapl.last().unwrap().sequence);

    let windows: Vec<Vec<Vec<f32>>> = vec![aapl.iter().map(|v| v.values.clone()).collect()];
    let body = json!({ "windows": windows }).to_string();
    let r = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/api/v1/predict")
            .insert_header(("content-type", "application/json"))
            .set_payload(body)
            .to_request(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = test::read_body_json(r).await;
    let got = &v["predictions"][0];
    assert_eq!(got["members"].as_array().unwrap().len(), 3);
    for (a, b) in got["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&last.probabilities)
    {
        assert!((a.as_f64().unwrap() as f32 - b).abs() <= 1e-6);
    }

    let body = pb::FeatureVectorBatch {
        vectors: aapl.clone(),
    }
    .encode_to_vec();
    let r = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/api/v1/predict")
            .insert_header(("content-type", "application/x-protobuf"))
            .set_payload(body)
            .to_request(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let p = pb::EnsemblePrediction::decode(test::read_body(r).await).unwrap();
    assert_eq!(p.event_id, last.event_id);
    for (a, b) in p.probabilities.iter().zip(&last.probabilities) {
        assert!((a - b).abs() <= 1e-6);
    }

    // bad inputs: short window, NaN, wrong length, garbage protobuf
    let short =
        json!({ "windows": [aapl[..5].iter().map(|v| v.values.clone()).collect::<Vec<_>>()] }).to_string();
    let r = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/api/v1/predict")
            .insert_header(("content-type", "application/json"))
            .set_payload(short)
            .to_request(),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/api/v1/predict")
            .insert_header(("content-type", "application/json"))
            .set_payload(r#"{"windows": [[[1.0, 2.0]]]}"#)
            .to_request(),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/api/v1/predict")
            .insert_header(("content-type", "application/x-protobuf"))
            .set_payload(vec![0xffu8, 0xff])
            .to_request(),
    )
    .await;
    assert_eq!(r.status(), 400);
}

fn window_body() -> String {
    let aapl: Vec<pb::FeatureVector> = common::real_vectors()
        .into_iter()
        .filter(|v| v.symbol == "AAPL")
        .take(40)
        .collect();
    let windows: Vec<Vec<Vec<f32>>> = vec![aapl.iter().map(|v| v.values.clone()).collect()];
    json!({ "windows": windows }).to_string()
}

#[actix_web::test]
async fn test_predict_spends_model_time_only_with_the_token_when_one_is_set() {
    let st = state("s3cret").await;
    let app = app!(st);
    let post = |auth: Option<&str>| {
        let mut r = test::TestRequest::post()
            .uri("/api/v1/predict")
            .insert_header(("content-type", "application/json"))
            .set_payload(window_body());
        if let Some(t) = auth {
            r = r.insert_header(("authorization", format!("Bearer {t}")));
        }
        r.to_request()
    };
    assert_eq!(test::call_service(&app, post(None)).await.status(), 401);
    assert_eq!(test::call_service(&app, post(Some("wrong"))).await.status(), 401);
    assert_eq!(test::call_service(&app, post(Some("s3cret"))).await.status(), 200);
}

#[actix_web::test]
async fn test_a_cross_site_text_plain_post_is_not_taken_as_json() {
    let st = state("").await;
    let app = app!(st);
    let r = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/api/v1/predict")
            .insert_header(("content-type", "text/plain"))
            .set_payload(window_body())
            .to_request(),
    )
    .await;
    assert_eq!(r.status(), 415, "only application/json or protobuf");
    // JSON media types as actix-web's JSON extractor took them (a review found the rewrite
    // refused all but the bare application/json on the config patch).
    for ct in [
        "application/json; charset=utf-8",
        "text/json",
        "application/vnd.augur+json",
    ] {
        let r = test::call_service(
            &app,
            test::TestRequest::post()
                .uri("/api/v1/predict")
                .insert_header(("content-type", ct))
                .set_payload(window_body())
                .to_request(),
        )
        .await;
        assert_eq!(r.status(), 200, "predict with {ct}");
    }
    for ct in ["application/json; charset=utf-8", "application/merge-patch+json"] {
        let r = test::call_service(
            &app,
            test::TestRequest::patch()
                .uri("/api/v1/config")
                .insert_header(("content-type", ct))
                .set_payload(r#"{"aggregator": {"deadline_ms": 100}}"#)
                .to_request(),
        )
        .await;
        assert_eq!(r.status(), 200, "config patch with {ct}");
    }
}

#[actix_web::test]
async fn test_credentials_inside_urls_are_masked_in_the_config_view() {
    let mut cfg = common::config("nats://augur:hunter2@127.0.0.1:4222");
    cfg.jetstream.url = "tls://svc:pa55@broker.internal:4222".into();
    let pipeline = augur_service::service::build_pipeline(&cfg, vec![])
        .await
        .unwrap();
    let st = AppState {
        pipeline,
        config: Arc::new(RwLock::new(cfg)),
        metrics: augur_service::telemetry::install(),
        started: Instant::now(),
        buses: Vec::new(),
        stopping: Default::default(),
        oip: Default::default(),
        access: None,
    };
    let app = app!(st);
    let r = test::call_service(&app, test::TestRequest::get().uri("/api/v1/config").to_request()).await;
    let text = String::from_utf8(test::read_body(r).await.to_vec()).unwrap();
    assert!(!text.contains("hunter2") && !text.contains("pa55"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["nats"]["url"], "nats://***@127.0.0.1:4222");
    assert_eq!(v["jetstream"]["url"], "tls://***@broker.internal:4222");
}

/// Every `$ref` inside `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                out.push(r.clone());
            }
            o.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[actix_web::test]
async fn test_the_openapi_document_describes_every_route_that_is_served() {
    use std::collections::BTreeSet;
    let st = state("s3cret").await;
    let app = app!(st);
    let r = test::call_service(&app, test::TestRequest::get().uri("/openapi.json").to_request()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("content-type").unwrap(), "application/json");
    let doc: Value = test::read_body_json(r).await;
    let version = doc["openapi"].as_str().expect("an `openapi` version");
    assert!(version.starts_with("3."), "openapi {version}");

    // Both ways: every route `configure` registers is documented, and nothing else is.
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let served: BTreeSet<(String, String)> = augur_service::http::routes()
        .into_iter()
        .map(|(p, m)| (p.to_string(), m.as_str().to_ascii_lowercase()))
        .collect();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .expect("a path item")
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()))
                .map(move |m| (p.clone(), m.clone()))
        })
        .collect();
    assert_eq!(documented, served, "/openapi.json and the route table differ");
    for (path, method) in &served {
        let op = &doc["paths"][path][method];
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}: no 2xx"
        );
        // The table is what is registered: each route answers (an empty request is refused
        // at worst, never 404).
        let m = actix_web::http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let status = test::call_service(
            &app,
            test::TestRequest::default().method(m).uri(path).to_request(),
        )
        .await
        .status();
        assert_ne!(status, 404, "{method} {path} is in the table but not served");
        assert!(
            responses.contains_key(status.as_str()),
            "{method} {path} answered an empty request with {status}, documented: {:?}",
            responses.keys().collect::<Vec<_>>()
        );
    }

    // The token-protected operations declare the bearer scheme, and document its 401.
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for (path, method) in [("/api/v1/config", "patch"), ("/api/v1/predict", "post")] {
        let op = &doc["paths"][path][method];
        assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
        assert!(op["responses"]["401"].is_object(), "{method} {path}");
        for status in ["400", "413", "415"] {
            assert!(op["responses"][status].is_object(), "{method} {path}: {status}");
        }
    }
    assert!(doc["paths"]["/api/v1/config"]["get"]["security"].is_null());
    let predict = &doc["paths"]["/api/v1/predict"]["post"];
    for ct in ["application/json", "application/x-protobuf"] {
        assert!(predict["requestBody"]["content"][ct].is_object(), "request {ct}");
        assert!(
            predict["responses"]["200"]["content"][ct].is_object(),
            "response {ct}"
        );
    }
    assert!(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]["text/plain"].is_object());

    // Every reference resolves.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.strip_prefix('#').expect("a local $ref");
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }

    // Exact for the loaded models: windows of at least 32 vectors of 20 values (the members'),
    // the patchable model ids, the executor limits fixed at start-up.
    let windows = &doc["components"]["schemas"]["PredictRequest"]["properties"]["windows"];
    assert_eq!(windows["items"]["minItems"], 32, "{windows}");
    assert_eq!(windows["items"]["items"]["minItems"], 20);
    assert_eq!(windows["items"]["items"]["maxItems"], 20);
    assert_eq!(
        doc["components"]["schemas"]["ModelsPatch"]["properties"]["enabled"]["propertyNames"]["enum"],
        json!(["lstm-direction", "cnn-pattern", "xgb-direction"])
    );
    let executor = &doc["components"]["schemas"]["ExecutorPatch"]["properties"];
    let cfg = st.config.read().unwrap().clone();
    assert_eq!(
        executor["queue_capacity"]["const"],
        json!(cfg.executor.queue_capacity)
    );
    let shown: Value =
        test::call_and_read_body_json(&app, test::TestRequest::get().uri("/api/v1/config").to_request())
            .await;
    let sections: BTreeSet<&String> = shown.as_object().unwrap().keys().collect();
    let required: BTreeSet<&String> = doc["components"]["schemas"]["ConfigView"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| match v {
            Value::String(s) => s,
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(sections, required);
}

#[actix_web::test]
async fn test_without_a_token_the_document_asks_for_none() {
    let st = state("").await;
    let app = app!(st);
    let doc: Value =
        test::call_and_read_body_json(&app, test::TestRequest::get().uri("/openapi.json").to_request()).await;
    for (path, method) in [("/api/v1/config", "patch"), ("/api/v1/predict", "post")] {
        let op = &doc["paths"][path][method];
        assert!(op["security"].is_null(), "{method} {path}: {}", op["security"]);
        assert!(op["responses"]["401"].is_null(), "{method} {path}");
    }
}

#[actix_web::test]
async fn test_an_undocumented_method_on_a_known_path_is_405_with_allow() {
    let st = state("s3cret").await;
    let app = app!(st);
    for (path, method, allow) in [
        ("/api/v1/config", actix_web::http::Method::DELETE, "GET, PATCH"),
        ("/api/v1/predict", actix_web::http::Method::GET, "POST"),
        ("/health/live", actix_web::http::Method::POST, "GET"),
    ] {
        let r = test::call_service(
            &app,
            test::TestRequest::default()
                .method(method.clone())
                .uri(path)
                .to_request(),
        )
        .await;
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers().get("allow").unwrap(), allow, "{method} {path}");
    }
}

#[actix_web::test]
async fn test_a_body_that_is_an_array_is_refused() {
    // serde reads a struct from an array of its fields: `[]` would be an empty patch.
    let st = state("").await;
    let app = app!(st);
    for (method, path, body) in [
        (actix_web::http::Method::PATCH, "/api/v1/config", "[]"),
        (
            actix_web::http::Method::PATCH,
            "/api/v1/config",
            r#"{"models": []}"#,
        ),
        (actix_web::http::Method::POST, "/api/v1/predict", "[[]]"),
    ] {
        let r = test::call_service(
            &app,
            test::TestRequest::default()
                .method(method.clone())
                .uri(path)
                .insert_header(("content-type", "application/json"))
                .set_payload(body)
                .to_request(),
        )
        .await;
        assert_eq!(r.status(), 400, "{method} {path} {body}");
        let v: Value = test::read_body_json(r).await;
        assert_eq!(v["error"], "Bad Request");
    }
}

#[actix_web::test]
async fn test_run_time_patches_cannot_make_the_service_unready_or_its_means_nan() {
    let st = state("").await;
    let app = app!(st);
    let patch = |body: &'static str| {
        test::TestRequest::patch()
            .uri("/api/v1/config")
            .insert_header(("content-type", "application/json"))
            .set_payload(body)
            .to_request()
    };
    // A watchdog timeout shorter than a forward pass would give up every executor at once.
    let r = test::call_service(&app, patch(r#"{"executor": {"forward_timeout_ms": 1}}"#)).await;
    assert_eq!(r.status(), 400);
    // Each weight within float32, their sum past it: every weighted mean would be NaN.
    let r = test::call_service(
        &app,
        patch(r#"{"aggregator": {"weights": {"lstm-direction": 3e38, "cnn-pattern": 3e38}}}"#),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = test::read_body_json(r).await;
    assert!(v["problems"][0].as_str().unwrap().contains("add up"), "{v}");
    // One double above float32's largest (schemathesis' case): serde_json's default float
    // parsing read it 1 ULP low, as exactly that largest, and the weight was accepted.
    let r = test::call_service(
        &app,
        patch(r#"{"aggregator": {"weights": {"lstm-direction": 3.402823466385289e+38}}}"#),
    )
    .await;
    assert_eq!(r.status(), 400, "a weight above the documented maximum");
    // A breaker window of 2^63 calls (schemathesis' case): the window holds one outcome per
    // call up to that many, so its memory had no bound.
    let r = test::call_service(
        &app,
        patch(r#"{"breaker": {"window_calls": 9223372036854775808}}"#),
    )
    .await;
    assert_eq!(r.status(), 400, "a breaker window past its documented maximum");
}

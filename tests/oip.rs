//! The Open Inference Protocol (KServe v2) against a running service, over HTTP (JSON and the
//! binary-data extension) and gRPC (Triton's `GRPCInferenceService`, through the client tonic
//! generates from the same proto): every member and `augur-ensemble` answer what `augur
//! replay` computes for the same windows; metadata, readiness, the repository's index, load
//! and unload, statistics, the token, and bad requests answered with the protocol's errors.
//! tests/python/test_tritonclient.py does the same with Triton's own client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::collections::HashMap;

use augur_service::grpc::pb;
use augur_service::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use augur_service::pb as contract;
use prost::Message;
use serde_json::{Value, json};

const MEMBERS: [&str; 3] = ["lstm-direction", "cnn-pattern", "xgb-direction"];

/// 40 real AAPL vectors and what replay predicts for the last one.
fn reference() -> (
    Vec<contract::FeatureVector>,
    std::sync::Arc<augur_actors::types::Ensemble>,
) {
    reference_explained(0)
}

/// [`reference`], each member that explains giving its `explain` largest contributions.
fn reference_explained(
    explain: usize,
) -> (
    Vec<contract::FeatureVector>,
    std::sync::Arc<augur_actors::types::Ensemble>,
) {
    let aapl: Vec<contract::FeatureVector> = common::real_vectors()
        .into_iter()
        .filter(|v| v.symbol == "AAPL")
        .take(40)
        .collect();
    let mut file = Vec::new();
    for v in &aapl {
        contract::FeatureVectorBatch {
            vectors: vec![v.clone()],
        }
        .encode_length_delimited(&mut file)
        .unwrap();
    }
    let mut cfg = common::config("nats://unused:4222");
    cfg.executor.explain_top_k = explain;
    let out = actix_rt::System::new()
        .block_on(augur_service::service::replay(&cfg, &file))
        .unwrap();
    let last = out.predictions.last().unwrap().clone();
    assert_eq!(last.sequence, aapl.last().unwrap().sequence);
    (aapl, last)
}

fn start(token: &str) -> common::Service {
    let mut cfg = common::config("nats://unused:4222");
    cfg.nats.enabled = false;
    cfg.http.token = token.into();
    common::Service::start(cfg)
}

/// The last `t` vectors, flattened.
fn window(vs: &[contract::FeatureVector], t: usize) -> Vec<f32> {
    vs[vs.len() - t..].iter().flat_map(|v| v.values.clone()).collect()
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-6, "{a:?} vs {b:?}");
    }
}

fn post_json(addr: &str, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let (s, b) = common::http(addr, "POST", path, headers, body.to_string().as_bytes());
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn test_http_infer_of_every_model_equals_replay_in_json_and_binary() {
    let (vs, want) = reference();
    let svc = start("");
    let addr = svc.http();
    let (s, meta) = common::get_json(&addr, "/v2");
    assert_eq!(s, 200);
    assert_eq!(meta["name"], "augur");
    assert!(
        meta["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("binary_tensor_data"))
    );

    for m in &want.members {
        let (s, md) = common::get_json(&addr, &format!("/v2/models/{}", m.model_id));
        assert_eq!(s, 200, "{md}");
        assert_eq!(md["versions"], json!([m.model_version.to_string()]));
        let shape = md["inputs"][0]["shape"].clone();
        let t = shape[1].as_u64().unwrap() as usize;
        let f = shape[2].as_u64().unwrap() as usize;
        let (s, _) = common::http(
            &addr,
            "GET",
            &format!("/v2/models/{}/ready", m.model_id),
            &[],
            b"",
        );
        assert_eq!(s, 200);
        let body = json!({
            "id": "r1",
            "inputs": [{"name": "window", "shape": [1, t, f], "datatype": "FP32", "data": window(&vs, t)}],
        });
        let (s, r) = post_json(&addr, &format!("/v2/models/{}/infer", m.model_id), &body, &[]);
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["id"], "r1");
        assert_eq!(r["model_version"], m.model_version.to_string());
        let probs = r["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "probabilities")
            .unwrap();
        assert_eq!(probs["shape"], json!([1, 3]));
        close(&floats(&probs["data"]), &m.probabilities);
    }

    // The ensemble, binary in and out: the JSON header, then the little-endian floats.
    let (_, md) = common::get_json(&addr, "/v2/models/augur-ensemble");
    let t = md["inputs"][0]["shape"][1].as_u64().unwrap() as usize;
    let f = md["inputs"][0]["shape"][2].as_u64().unwrap() as usize;
    let raw: Vec<u8> = window(&vs, t).iter().flat_map(|x| x.to_le_bytes()).collect();
    let head = json!({
        "inputs": [{"name": "window", "shape": [1, t, f], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
        "parameters": {"binary_data_output": true},
        "outputs": [{"name": "probabilities"}, {"name": "direction", "parameters": {"binary_data": false}}, {"name": "members"}],
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&raw);
    let len = head.len().to_string();
    let (s, b) = common::http(
        &addr,
        "POST",
        "/v2/models/augur-ensemble/infer",
        &[("Inference-Header-Content-Length", &len)],
        &body,
    );
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    // The response's JSON part is a whole object; the bytes follow it.
    let mut de = serde_json::Deserializer::from_slice(&b).into_iter::<Value>();
    let r = de.next().unwrap().unwrap();
    let mut tail = &b[de.byte_offset()..];
    let mut got = HashMap::new();
    for o in r["outputs"].as_array().unwrap() {
        let name = o["name"].as_str().unwrap().to_string();
        if let Some(n) = o["parameters"]["binary_data_size"].as_u64() {
            let (x, rest) = tail.split_at(n as usize);
            tail = rest;
            got.insert(
                name,
                x.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<f32>>(),
            );
        } else {
            assert_eq!(name, "direction");
            let d = o["data"][0].as_str().unwrap();
            let want_d = format!("{:?}", want.direction).to_lowercase();
            assert_eq!(d, want_d);
        }
    }
    assert!(tail.is_empty());
    close(&got["probabilities"], &want.probabilities);
    let members: Vec<f32> = want
        .members
        .iter()
        .flat_map(|m| m.probabilities.clone())
        .collect();
    close(&got["members"], &members);
    let listed = r["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "members")
        .unwrap();
    assert_eq!(listed["parameters"]["members"], MEMBERS.join(","));

    // Statistics count the calls.
    let (_, st) = common::get_json(&addr, "/v2/models/augur-ensemble/stats");
    assert_eq!(
        st["model_stats"][0]["inference_stats"]["success"]["count"], 1,
        "{st}"
    );
    let (_, all) = common::get_json(&addr, "/v2/models/stats");
    assert_eq!(all["model_stats"].as_array().unwrap().len(), 5, "{all}");
    svc.stop();
}

/// The output named `name` of an HTTP JSON answer.
fn output<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name}: {r}"))
}

/// The heads (forecasts, chart patterns) and the explanations through infer, over HTTP and
/// gRPC, member by member and through `augur-ensemble`: what replay computes for the same
/// window; metadata lists them; explanations only when named, of the number asked for.
#[test]
fn test_infer_gives_forecasts_patterns_and_explanations_as_replay_computes() {
    let (vs, want) = reference_explained(3);
    let svc = start("");
    let addr = svc.http();
    let member = |id: &str| want.members.iter().find(|m| &*m.model_id == id).unwrap();
    let body = |t: usize, outputs: &[&str], params: Value| {
        json!({
            "inputs": [{"name": "window", "shape": [1, t, 20], "datatype": "FP32", "data": window(&vs, t)}],
            "outputs": outputs.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
            "parameters": params,
        })
    };
    let meta_outputs = |model: &str| -> Vec<(String, Value)> {
        let (s, md) = common::get_json(&addr, &format!("/v2/models/{model}"));
        assert_eq!(s, 200, "{md}");
        md["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (o["name"].as_str().unwrap().to_string(), o["shape"].clone()))
            .collect()
    };
    let lstm = member("lstm-direction");
    let cnn = member("cnn-pattern");
    let xgb = member("xgb-direction");
    assert_eq!(lstm.forecasts.len(), 4, "the committed lstm has a forecast head");
    assert_eq!(xgb.contributions.len(), 4, "replay explained xgb: 3 and the bias");

    // Metadata: each member's own heads; the ensemble all of them.
    let names = |v: &[(String, Value)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    let m = meta_outputs("lstm-direction");
    assert_eq!(names(&m), ["probabilities", "direction", "forecasts"]);
    assert_eq!(m[2].1, json!([-1, 4, 5]));
    let m = meta_outputs("cnn-pattern");
    assert_eq!(
        names(&m),
        ["probabilities", "direction", "patterns", "patterns_detected"]
    );
    assert_eq!(m[2].1, json!([-1, 7]));
    let m = meta_outputs("xgb-direction");
    assert_eq!(
        names(&m),
        [
            "probabilities",
            "direction",
            "contributions",
            "contribution_features"
        ]
    );
    let m = meta_outputs("augur-ensemble");
    assert_eq!(
        names(&m),
        [
            "probabilities",
            "direction",
            "members",
            "forecasts",
            "patterns",
            "patterns_detected",
            "contributions",
            "contribution_features"
        ]
    );

    // Forecasts: each horizon's (mu, sigma, lower, upper, confidence) as replay's.
    let want_forecasts: Vec<f32> = lstm
        .forecasts
        .iter()
        .flat_map(|f| {
            [
                f.expected_return,
                f.sigma,
                f.lower_return,
                f.upper_return,
                f.confidence,
            ]
        })
        .collect();
    for model in ["lstm-direction", "augur-ensemble"] {
        // Both windows are 32 bars (the ensemble's is its longest member's).
        let (s, r) = post_json(
            &addr,
            &format!("/v2/models/{model}/infer"),
            &body(32, &[], json!({})),
            &[],
        );
        assert_eq!(s, 200, "{r}");
        let f = output(&r, "forecasts");
        assert_eq!(f["shape"], json!([1, 4, 5]), "{f}");
        assert_eq!(f["parameters"]["horizons"], "1,5,15,60", "{f}");
        assert_eq!(f["parameters"]["fields"], augur_service::oip::FORECAST_FIELDS);
        close(&floats(&f["data"]), &want_forecasts);
        assert!(
            r["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|o| o["name"] != "contributions"),
            "explanations only when named: {r}"
        );
        if model == "augur-ensemble" {
            assert_eq!(f["parameters"]["model"], "lstm-direction");
        }
    }

    // Patterns: every pattern's probability; the detected ones are replay's, most probable first.
    let (s, r) = post_json(
        &addr,
        "/v2/models/cnn-pattern/infer",
        &body(32, &[], json!({})),
        &[],
    );
    assert_eq!(s, 200, "{r}");
    let p = output(&r, "patterns");
    let pattern_names: Vec<String> = p["parameters"]["patterns"]
        .as_str()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    assert_eq!(pattern_names.len(), 7, "{p}");
    let thresholds: Vec<f32> = p["parameters"]["thresholds"]
        .as_str()
        .unwrap()
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    let scores = floats(&p["data"]);
    let mut above: Vec<(f32, &str)> = scores
        .iter()
        .zip(&thresholds)
        .zip(&pattern_names)
        .filter(|((s, t), _)| s >= t)
        .map(|((s, _), n)| (*s, n.as_str()))
        .collect();
    above.sort_by(|a, b| b.0.total_cmp(&a.0));
    let replay_patterns: Vec<(f32, &str)> = cnn.patterns.iter().map(|p| (p.probability, &*p.name)).collect();
    assert_eq!(
        above.len(),
        replay_patterns.len(),
        "{above:?} vs {replay_patterns:?}"
    );
    for (a, b) in above.iter().zip(&replay_patterns) {
        assert_eq!(a.1, b.1);
        assert!((a.0 - b.0).abs() <= 1e-6);
    }
    let detected = output(&r, "patterns_detected")["data"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        detected,
        replay_patterns.iter().map(|p| p.1).collect::<Vec<_>>().join(",")
    );

    // Explanations: named, of the number asked for, as replay's (3 and the bias); the feature
    // names from the feature set.
    let want_values: Vec<f32> = xgb.contributions.iter().map(|c| c.value).collect();
    let want_features: Vec<Value> = xgb
        .contributions
        .iter()
        .map(|c| json!(c.feature.to_string()))
        .collect();
    for model in ["xgb-direction", "augur-ensemble"] {
        let t = if model == "xgb-direction" { 3 } else { 32 };
        let (s, r) = post_json(
            &addr,
            &format!("/v2/models/{model}/infer"),
            &body(
                t,
                &["contributions", "contribution_features", "direction"],
                json!({"explain_top_k": 3}),
            ),
            &[],
        );
        assert_eq!(s, 200, "{r}");
        let c = output(&r, "contributions");
        assert_eq!(c["shape"], json!([1, 4]), "{c}");
        close(&floats(&c["data"]), &want_values);
        let names = output(&r, "contribution_features");
        assert_eq!(names["data"].as_array().unwrap(), &want_features);
        assert_eq!(want_features.last().unwrap(), "bias");
    }
    // Without the parameter: [executor].explain_top_k (0 here), so the default number.
    let (s, r) = post_json(
        &addr,
        "/v2/models/xgb-direction/infer",
        &body(3, &["contributions"], json!({})),
        &[],
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        output(&r, "contributions")["shape"],
        json!([1, augur_service::oip::DEFAULT_EXPLAIN_TOP_K + 1])
    );
    // Fewer than before, from the cache: the largest of them, then the bias.
    let (s, r) = post_json(
        &addr,
        "/v2/models/xgb-direction/infer",
        &body(3, &["contributions"], json!({"explain_top_k": 1})),
        &[],
    );
    assert_eq!(s, 200, "{r}");
    close(
        &floats(&output(&r, "contributions")["data"]),
        &[want_values[0], *want_values.last().unwrap()],
    );

    // Refused: the parameter without the output, out of range, an explanation of a model that
    // cannot explain.
    for (model, t, outputs, params, why) in [
        (
            "xgb-direction",
            3,
            vec![],
            json!({"explain_top_k": 3}),
            "name the output",
        ),
        (
            "xgb-direction",
            3,
            vec!["contributions"],
            json!({"explain_top_k": 0}),
            "1 to 64",
        ),
        (
            "xgb-direction",
            3,
            vec!["contributions"],
            json!({"explain_top_k": 65}),
            "1 to 64",
        ),
        (
            "xgb-direction",
            3,
            vec!["contributions"],
            json!({"explain_top_k": "3"}),
            "integer",
        ),
        (
            "lstm-direction",
            32,
            vec!["contributions"],
            json!({}),
            "unknown outputs",
        ),
    ] {
        let (s, r) = post_json(
            &addr,
            &format!("/v2/models/{model}/infer"),
            &body(t, &outputs, params),
            &[],
        );
        assert_eq!(s, 400, "{r}");
        assert!(r["error"].as_str().unwrap().contains(why), "{why}: {r}");
    }

    // gRPC: the same values, the parameter as an int64.
    let grpc = format!("http://{}", svc.ready.grpc.unwrap());
    actix_rt::System::new().block_on(async {
        let mut c = GrpcInferenceServiceClient::connect(grpc).await.unwrap();
        let mut params = HashMap::new();
        params.insert(
            "explain_top_k".to_string(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(3)),
            },
        );
        let req =
            |model: &str, t: usize, outputs: &[&str], parameters: HashMap<String, pb::InferParameter>| {
                pb::ModelInferRequest {
                    model_name: model.into(),
                    inputs: vec![pb::model_infer_request::InferInputTensor {
                        name: "window".into(),
                        datatype: "FP32".into(),
                        shape: vec![1, t as i64, 20],
                        contents: Some(pb::InferTensorContents {
                            fp32_contents: window(&vs, t),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    outputs: outputs
                        .iter()
                        .map(|n| pb::model_infer_request::InferRequestedOutputTensor {
                            name: n.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                    parameters,
                    ..Default::default()
                }
            };
        let raw_f32 = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let r = c
            .model_infer(req(
                "augur-ensemble",
                32,
                &["forecasts", "contributions"],
                params.clone(),
            ))
            .await
            .unwrap()
            .into_inner();
        let names: Vec<&str> = r.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["forecasts", "contributions"]);
        assert_eq!(r.outputs[0].shape, [1, 4, 5]);
        close(&raw_f32(&r.raw_output_contents[0]), &want_forecasts);
        close(&raw_f32(&r.raw_output_contents[1]), &want_values);
        let r = c
            .model_infer(req("cnn-pattern", 32, &["patterns"], HashMap::new()))
            .await
            .unwrap()
            .into_inner();
        close(&raw_f32(&r.raw_output_contents[0]), &scores);
        let e = c
            .model_infer(req("xgb-direction", 3, &["direction"], params.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    });
    svc.stop();
}

#[test]
fn test_http_protocol_errors_and_repository_calls() {
    let svc = start("s3cret");
    let addr = svc.http();
    let auth = [("Authorization", "Bearer s3cret")];
    let one = |name: &str, shape: Value, data: Value| json!({"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": data}]});
    // The token: infer and the repository's load/unload need it.
    let (s, r) = post_json(
        &addr,
        "/v2/models/xgb-direction/infer",
        &one("window", json!([1, 1, 20]), json!(vec![0.0f64; 20])),
        &[],
    );
    assert_eq!(s, 401, "{r}");
    assert!(r["error"].is_string());
    let (s, r) = post_json(
        &addr,
        "/v2/repository/models/xgb-direction/unload",
        &json!({}),
        &[],
    );
    assert_eq!(s, 401, "{r}");
    // Unknown model, unknown version, wrong shape, not finite, wrong input, junk.
    for (path, body, status) in [
        (
            "/v2/models/nope/infer",
            one("window", json!([1, 1, 20]), json!(vec![0.0f64; 20])),
            404,
        ),
        (
            "/v2/models/xgb-direction/versions/99/infer",
            one("window", json!([1, 1, 20]), json!(vec![0.0f64; 20])),
            404,
        ),
        (
            "/v2/models/xgb-direction/infer",
            one("window", json!([1, 2, 20]), json!(vec![0.0f64; 20])),
            400,
        ),
        (
            "/v2/models/xgb-direction/infer",
            one("window", json!([1, 1, 20]), json!(vec![0.0f64; 19])),
            400,
        ),
        (
            "/v2/models/xgb-direction/infer",
            one("window", json!([1, 1, 20]), json!(vec![1e39f64; 20])),
            400,
        ),
        (
            "/v2/models/xgb-direction/infer",
            one("x", json!([1, 1, 20]), json!(vec![0.0f64; 20])),
            400,
        ),
        (
            "/v2/models/xgb-direction/infer",
            one("window", json!([i64::MAX, i64::MAX, 20]), json!(vec![0.0f64; 20])),
            400,
        ),
        ("/v2/models/xgb-direction/infer", json!([1, 2]), 400),
    ] {
        let (s, r) = post_json(&addr, path, &body, &auth);
        assert_eq!(s, status, "{path} {body}: {r}");
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    let (s, _) = common::http(
        &addr,
        "POST",
        "/v2/models/xgb-direction/infer",
        &[auth[0], ("Inference-Header-Content-Length", "99999")],
        b"{}",
    );
    assert_eq!(s, 400);
    let (s, _) = common::get_json(&addr, "/v2/models/nope");
    assert_eq!(s, 404);
    // A huge name is not echoed whole; a compressed body, a duplicate or classification
    // output, an unknown timeframe are refused with the reason.
    let long = "m".repeat(5_000);
    let (s, r) = post_json(
        &addr,
        &format!("/v2/models/{long}/infer"),
        &one("window", json!([1, 1, 20]), json!(vec![0.0f64; 20])),
        &auth,
    );
    assert_eq!(s, 404);
    assert!(
        r["error"].as_str().unwrap().len() < 2000,
        "{}",
        r["error"].as_str().unwrap().len()
    );
    let (s, _) = common::http(
        &addr,
        "POST",
        "/v2/models/xgb-direction/infer",
        &[auth[0], ("Content-Encoding", "gzip")],
        b"\x1f\x8b",
    );
    assert_eq!(s, 415);
    let x3 = one("window", json!([1, 3, 20]), json!(vec![0.1f64; 60]));
    let mut dup = x3.clone();
    dup["outputs"] = json!([{"name": "direction"}, {"name": "direction"}]);
    let mut class = x3.clone();
    class["outputs"] = json!([{"name": "probabilities", "parameters": {"classification": 2}}]);
    let mut tf = x3.clone();
    tf["parameters"] = json!({"timeframe": "7m"});
    for (what, body) in [("twice", dup), ("classification", class), ("timeframe", tf)] {
        let model = if what == "timeframe" {
            "augur-ensemble"
        } else {
            "xgb-direction"
        };
        let body = if what == "timeframe" {
            let mut b = one("window", json!([1, 32, 20]), json!(vec![0.1f64; 640]));
            b["parameters"] = body["parameters"].clone();
            b
        } else {
            body
        };
        let (s, r) = post_json(&addr, &format!("/v2/models/{model}/infer"), &body, &auth);
        assert_eq!(s, 400, "{what}: {r}");
        assert!(r["error"].as_str().unwrap().contains(what), "{what}: {r}");
    }
    let (_, md) = common::get_json(&addr, "/v2/models/augur-ensemble");
    assert_eq!(md["outputs"][2]["shape"], json!([-1, -1, 3]), "{md}");

    // Unload a member: it is out of the index's READY list and of augur-ensemble's members;
    // load puts it back.
    let (s, _) = common::http(
        &addr,
        "POST",
        "/v2/repository/models/cnn-pattern/unload",
        &auth,
        b"",
    );
    assert_eq!(s, 200);
    let (s, _) = common::http(&addr, "GET", "/v2/models/cnn-pattern/ready", &[], b"");
    assert_eq!(s, 400);
    let (_, idx) = post_json(&addr, "/v2/repository/index", &json!({}), &[]);
    let cnn = idx
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "cnn-pattern")
        .unwrap();
    assert_eq!(cnn["state"], "UNAVAILABLE", "{idx}");
    let (s, r) = post_json(
        &addr,
        "/v2/models/cnn-pattern/infer",
        &one("window", json!([1, 32, 20]), json!(vec![0.0f64; 640])),
        &auth,
    );
    assert_eq!(s, 503, "{r}");
    let (_, md) = common::get_json(&addr, "/v2/models/augur-ensemble");
    let t = md["inputs"][0]["shape"][1].as_u64().unwrap() as usize;
    let body = one("window", json!([2, t, 20]), json!(vec![0.1f32; 2 * t * 20]));
    let (s, r) = post_json(&addr, "/v2/models/augur-ensemble/infer", &body, &auth);
    assert_eq!(s, 200, "{r}");
    let members = r["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "members")
        .unwrap();
    assert_eq!(members["shape"], json!([2, 2, 3]));
    assert_eq!(members["parameters"]["members"], "lstm-direction,xgb-direction");
    let (s, _) = common::http(
        &addr,
        "POST",
        "/v2/repository/models/cnn-pattern/load",
        &auth,
        b"{}",
    );
    assert_eq!(s, 200);
    let (s, _) = common::http(&addr, "GET", "/v2/models/cnn-pattern/ready", &[], b"");
    assert_eq!(s, 200);
    // The stacker and the ensemble follow the members: they cannot be unloaded.
    let (s, _) = common::http(
        &addr,
        "POST",
        "/v2/repository/models/augur-ensemble/unload",
        &auth,
        b"",
    );
    assert_eq!(s, 400);
    svc.stop();
}

#[test]
fn test_grpc_infer_metadata_repository_and_statistics() {
    let (vs, want) = reference();
    let svc = start("tok");
    let addr = format!("http://{}", svc.ready.grpc.expect("grpc enabled"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = GrpcInferenceServiceClient::connect(addr).await.unwrap();
        assert!(
            c.server_live(pb::ServerLiveRequest {})
                .await
                .unwrap()
                .into_inner()
                .live
        );
        assert!(
            c.server_ready(pb::ServerReadyRequest {})
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        let md = c
            .model_metadata(pb::ModelMetadataRequest {
                name: "augur-ensemble".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let (t, f) = (md.inputs[0].shape[1] as usize, md.inputs[0].shape[2] as usize);
        let authed = |m: pb::ModelInferRequest| {
            let mut r = tonic::Request::new(m);
            r.metadata_mut()
                .insert("authorization", "Bearer tok".parse().unwrap());
            r
        };
        let req = |name: &str, t: usize| pb::ModelInferRequest {
            model_name: name.into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "window".into(),
                datatype: "FP32".into(),
                shape: vec![1, t as i64, f as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![window(&vs, t).iter().flat_map(|x| x.to_le_bytes()).collect()],
            ..Default::default()
        };
        let e = c.model_infer(req("augur-ensemble", t)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let r = c
            .model_infer(authed(req("augur-ensemble", t)))
            .await
            .unwrap()
            .into_inner();
        let names: Vec<&str> = r.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "probabilities",
                "direction",
                "members",
                "forecasts",
                "patterns",
                "patterns_detected"
            ]
        );
        let f32s = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        close(&f32s(&r.raw_output_contents[0]), &want.probabilities);
        for m in &want.members {
            let w = c
                .model_metadata(pb::ModelMetadataRequest {
                    name: m.model_id.to_string(),
                    version: m.model_version.to_string(),
                })
                .await
                .unwrap()
                .into_inner()
                .inputs[0]
                .shape[1] as usize;
            let r = c
                .model_infer(authed(req(&m.model_id, w)))
                .await
                .unwrap()
                .into_inner();
            close(&f32s(&r.raw_output_contents[0]), &m.probabilities);
        }
        let e = c
            .model_ready(pb::ModelReadyRequest {
                name: "nope".into(),
                version: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let mut bad = req("xgb-direction", 1);
        bad.raw_input_contents[0].pop();
        let e = c.model_infer(authed(bad)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

        let unload = |name: &str| {
            let mut r = tonic::Request::new(pb::RepositoryModelUnloadRequest {
                model_name: name.into(),
                ..Default::default()
            });
            r.metadata_mut()
                .insert("authorization", "Bearer tok".parse().unwrap());
            r
        };
        c.repository_model_unload(unload("xgb-direction")).await.unwrap();
        let idx = c
            .repository_index(pb::RepositoryIndexRequest {
                ready: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!idx.models.iter().any(|m| m.name == "xgb-direction"), "{idx:?}");
        let mut load = tonic::Request::new(pb::RepositoryModelLoadRequest {
            model_name: "xgb-direction".into(),
            ..Default::default()
        });
        load.metadata_mut()
            .insert("authorization", "Bearer tok".parse().unwrap());
        c.repository_model_load(load).await.unwrap();
        assert!(
            c.model_ready(pb::ModelReadyRequest {
                name: "xgb-direction".into(),
                version: String::new()
            })
            .await
            .unwrap()
            .into_inner()
            .ready
        );
        let st = c
            .model_statistics(pb::ModelStatisticsRequest {
                name: "augur-ensemble".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let s = st.model_stats[0].inference_stats.unwrap();
        assert_eq!(s.success.unwrap().count, 1);
        assert_eq!(
            s.fail.unwrap().count,
            0,
            "the unauthenticated call never reached the model"
        );
    });
    drop(rt);
    svc.stop();
}

/// NVIDIA's tritonclient (tests/python/test_tritonclient.py, pytest in the project's venv)
/// against this service over HTTP and gRPC, checked against replay.
#[test]
fn test_tritonclient_over_http_and_grpc_gets_what_replay_computes() {
    let (vs, want) = reference_explained(3);
    let svc = start("triton-token");
    // Kept after the run, to rerun the Python side by hand against a service.
    let case = common::root().join("target/tritonclient-case.json");
    let direction = format!("{:?}", want.direction).to_lowercase();
    std::fs::write(
        &case,
        json!({
            "http": svc.http(),
            "grpc": svc.ready.grpc.unwrap().to_string(),
            "token": "triton-token",
            "vectors": vs.iter().map(|v| v.values.clone()).collect::<Vec<_>>(),
            "ensemble": {"probabilities": want.probabilities, "direction": direction},
            "members": want.members.iter().map(|m| json!({
                "name": m.model_id.to_string(),
                "version": m.model_version.to_string(),
                "probabilities": m.probabilities,
                "forecasts": m.forecasts.iter().flat_map(|f| [f.expected_return, f.sigma, f.lower_return, f.upper_return, f.confidence]).collect::<Vec<_>>(),
                "contributions": m.contributions.iter().map(|c| c.value).collect::<Vec<_>>(),
                "features": m.contributions.iter().map(|c| c.feature.to_string()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
        .to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(common::root().join(".venv/bin/python"))
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/python/test_tritonclient.py",
        ])
        .current_dir(common::root())
        .env("AUGUR_OIP_CASE", &case)
        .output()
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    // Every case ran, on both transports (no skips, nothing deselected).
    assert!(log.contains("16 passed"), "{log}");
    svc.stop();
}

/// A keys file of one tenant per tier (and a rate-limited one), its keys.
fn keys_file(dir: &std::path::Path, revoke_pro: bool) -> std::path::PathBuf {
    use augur_service::tenants::hash_line;
    let p = dir.join("keys.toml");
    let revoked = if revoke_pro {
        format!("\"{}\"", hash_line("k-pro"))
    } else {
        String::new()
    };
    let text = format!(
        "revoked = [\"{}\", {revoked}]\n\
         [[tenant]]\nname = \"desk-free\"\ntier = \"free\"\nrate_per_s = 1000\nmax_concurrency = 8\nkeys = [\"{}\"]\n\
         [[tenant]]\nname = \"desk-pro\"\ntier = \"pro\"\nrate_per_s = 1000\nmax_concurrency = 8\nkeys = [\"{}\"]\n\
         [[tenant]]\nname = \"desk-ent\"\ntier = \"enterprise\"\nrate_per_s = 1000\nmax_concurrency = 8\nkeys = [\"{}\"]\n\
         [[tenant]]\nname = \"desk-slow\"\ntier = \"pro\"\nrate_per_s = 0.01\nburst = 3\nmax_concurrency = 8\nkeys = [\"{}\"]\n",
        hash_line("k-old"),
        hash_line("k-free"),
        hash_line("k-pro"),
        hash_line("k-ent"),
        hash_line("k-slow"),
    )
    .replace(", ]", "]");
    std::fs::write(&p, text).unwrap();
    p
}

/// Each tier sees what it allows, a slow tenant is limited at its rate, missing, unknown and
/// revoked keys are refused, a revocation is picked up without a restart; over HTTP and gRPC.
#[test]
fn test_tenants_see_their_tier_and_are_limited_over_http_and_grpc() {
    let (vs, _) = reference();
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path(), false);
    let mut cfg = common::config("nats://unused:4222");
    cfg.nats.enabled = false;
    cfg.http.token = "operator".into();
    cfg.access.keys_file = keys.display().to_string();
    cfg.access.reload_ms = 100;
    let svc = common::Service::start(cfg);
    let addr = svc.http();
    let w = |t: usize| json!({"inputs": [{"name": "window", "shape": [1, t, 20], "datatype": "FP32", "data": window(&vs, t)}]});
    let call = |key: &str, model: &str, t: usize, outputs: Option<&[&str]>| {
        let mut body = w(t);
        if let Some(o) = outputs {
            body["outputs"] = json!(o.iter().map(|n| json!({"name": n})).collect::<Vec<_>>());
        }
        let auth = format!("Bearer {key}");
        let h: Vec<(&str, &str)> = if key.is_empty() {
            vec![]
        } else {
            vec![("Authorization", &auth)]
        };
        post_json(&addr, &format!("/v2/models/{model}/infer"), &body, &h)
    };
    let names = |r: &Value| -> Vec<String> {
        r["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    };
    // free: the ensemble's direction, nothing else.
    let (s, r) = call("k-free", "augur-ensemble", 32, None);
    assert_eq!((s, names(&r)), (200, vec!["direction".to_string()]), "{r}");
    let (s, r) = call("k-free", "augur-ensemble", 32, Some(&["probabilities"]));
    assert_eq!(s, 403, "{r}");
    let (s, r) = call("k-free", "lstm-direction", 32, None);
    assert_eq!(s, 403, "{r}");
    // pro: the ensemble in full and the members, not the stacker.
    let (s, r) = call("k-pro", "augur-ensemble", 32, None);
    assert_eq!(
        (s, names(&r)),
        (
            200,
            [
                "probabilities",
                "direction",
                "members",
                "forecasts",
                "patterns",
                "patterns_detected"
            ]
            .map(String::from)
            .to_vec()
        ),
        "{r}"
    );
    // Explanations are the enterprise tier's (and the operator's): refused when a lower tier
    // names them.
    let (s, r) = call("k-pro", "xgb-direction", 3, Some(&["direction", "contributions"]));
    assert_eq!(s, 403, "{r}");
    assert!(r["error"].as_str().unwrap().contains("contributions"), "{r}");
    for key in ["k-ent", "operator"] {
        let (s, r) = call(
            key,
            "xgb-direction",
            3,
            Some(&["contributions", "contribution_features"]),
        );
        assert_eq!((s, names(&r).len()), (200, 2), "{key}: {r}");
        assert_eq!(
            r["outputs"][1]["data"][0]
                .as_str()
                .map(|f| f.ends_with("[t]") || f.contains("[t-")),
            Some(true),
            "{r}"
        );
    }
    let (s, _) = call("k-pro", "xgb-direction", 3, None);
    assert_eq!(s, 200);
    let stacker = |key: &str| {
        let body = json!({"inputs": [{"name": "probabilities", "shape": [1, 9], "datatype": "FP32", "data": [0.2, 0.5, 0.3, 0.2, 0.5, 0.3, 0.2, 0.5, 0.3]}]});
        post_json(
            &addr,
            "/v2/models/ensemble-meta/infer",
            &body,
            &[("Authorization", &format!("Bearer {key}"))],
        )
    };
    assert_eq!(stacker("k-pro").0, 403);
    // enterprise and the operator: everything.
    assert_eq!(stacker("k-ent").0, 200);
    assert_eq!(stacker("operator").0, 200);
    // Below enterprise, a tenant may not choose the ensemble rule (stacking runs the stacker).
    let mut body = w(32);
    body["parameters"] = json!({"method": "stacking"});
    let (s, r) = post_json(
        &addr,
        "/v2/models/augur-ensemble/infer",
        &body,
        &[("Authorization", "Bearer k-pro")],
    );
    assert_eq!(s, 403, "{r}");
    let (s, r) = post_json(
        &addr,
        "/v2/models/augur-ensemble/infer",
        &body,
        &[("Authorization", "bearer  k-ent")],
    );
    assert_eq!(s, 200, "enterprise, and the scheme in any case: {r}");
    // A tenant may not load or unload.
    let (s, _) = common::http(
        &addr,
        "POST",
        "/v2/repository/models/cnn-pattern/unload",
        &[("Authorization", "Bearer k-ent")],
        b"",
    );
    assert_eq!(s, 403);
    // Refused keys.
    for (key, want) in [("", "required"), ("k-nope", "unknown"), ("k-old", "revoked")] {
        let (s, r) = call(key, "augur-ensemble", 32, None);
        assert_eq!(s, 401, "{key}: {r}");
        assert!(r["error"].as_str().unwrap().contains(want), "{key}: {r}");
    }
    // The rate: a burst of 3, then 429 (refills one per 100 s).
    let codes: Vec<u16> = (0..5)
        .map(|_| call("k-slow", "xgb-direction", 3, None).0)
        .collect();
    assert_eq!(codes, [200, 200, 200, 429, 429]);

    // gRPC: the same keys, the same answers.
    let grpc = format!("http://{}", svc.ready.grpc.unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = GrpcInferenceServiceClient::connect(grpc).await.unwrap();
        let req = |key: &str, model: &str, t: usize| {
            let mut r = tonic::Request::new(pb::ModelInferRequest {
                model_name: model.into(),
                inputs: vec![pb::model_infer_request::InferInputTensor {
                    name: "window".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, t as i64, 20],
                    ..Default::default()
                }],
                raw_input_contents: vec![window(&vs, t).iter().flat_map(|x| x.to_le_bytes()).collect()],
                ..Default::default()
            });
            if !key.is_empty() {
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {key}").parse().unwrap());
            }
            r
        };
        let r = c
            .model_infer(req("k-free", "augur-ensemble", 32))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            ["direction"]
        );
        assert_eq!(r.raw_output_contents.len(), 1);
        let e = c.model_infer(req("k-free", "cnn-pattern", 32)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        let r = c
            .model_infer(req("k-pro", "augur-ensemble", 32))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outputs.len(), 6);
        let explained = |key: &str| {
            let mut r = req(key, "xgb-direction", 3);
            r.get_mut().outputs = vec![pb::model_infer_request::InferRequestedOutputTensor {
                name: "contributions".into(),
                ..Default::default()
            }];
            r
        };
        let e = c.model_infer(explained("k-pro")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        let r = c.model_infer(explained("k-ent")).await.unwrap().into_inner();
        assert_eq!(
            r.outputs[0].shape,
            [1, augur_service::oip::DEFAULT_EXPLAIN_TOP_K as i64 + 1]
        );
        for key in ["", "k-nope", "k-old"] {
            let e = c.model_infer(req(key, "augur-ensemble", 32)).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{key}: {e}");
        }
        let e = c
            .model_infer(req("k-slow", "xgb-direction", 3))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");

        // Revoke the pro key in the file: refused within a few reloads, no restart.
        std::thread::sleep(std::time::Duration::from_millis(20));
        keys_file(dir.path(), true);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match c.model_infer(req("k-pro", "augur-ensemble", 32)).await {
                Err(e) if e.code() == tonic::Code::Unauthenticated => {
                    assert!(e.message().contains("revoked"), "{e}");
                    break;
                }
                _ if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                other => panic!("the revoked key still works: {other:?}"),
            }
        }
    });
    let (s, r) = call("k-pro", "augur-ensemble", 32, None);
    assert_eq!(s, 401, "{r}");
    // Refusals are counted per tenant, and by reason before a tenant is known.
    let (_, m) = common::http(&addr, "GET", "/metrics", &[], b"");
    let m = String::from_utf8_lossy(&m);
    let line = |name: &str, labels: &[&str]| {
        m.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(
        line("augur_tenant_calls_total", &["desk-slow", "rate_limited"]) >= 3.0,
        "{m}"
    );
    assert!(
        line("augur_tenant_calls_total", &["desk-free", "model_refused"]) >= 2.0,
        "{m}"
    );
    assert!(line("augur_auth_refused_total", &["revoked"]) >= 3.0, "{m}");
    drop(rt);
    svc.stop();
}

/// The management service on the gRPC port: the config read and patched (all or nothing, every
/// problem listed), the models listed and taken out of serving; the operator's token only.
#[test]
fn test_grpc_management_reads_and_patches_the_config_and_lists_the_models() {
    use augur_service::grpc::mgmt;
    use augur_service::grpc::mgmt::management_client::ManagementClient;
    let svc = start("op-token");
    let addr = format!("http://{}", svc.ready.grpc.unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = ManagementClient::connect(addr).await.unwrap();
        fn authed<T>(m: T) -> tonic::Request<T> {
            let mut r = tonic::Request::new(m);
            r.metadata_mut()
                .insert("authorization", "Bearer op-token".parse().unwrap());
            r
        }
        let e = c.get_config(mgmt::GetConfigRequest {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let cfg: Value = serde_json::from_str(
            &c.get_config(authed(mgmt::GetConfigRequest {}))
                .await
                .unwrap()
                .into_inner()
                .config_json,
        )
        .unwrap();
        assert_eq!(cfg["http"]["token"], "***", "the token is masked");
        assert_eq!(cfg["aggregator"]["method"], "weighted_mean");
        let patched = c
            .patch_config(authed(mgmt::PatchConfigRequest {
                patch_json: json!({"aggregator": {"method": "majority"}}).to_string(),
            }))
            .await
            .unwrap()
            .into_inner();
        let v: Value = serde_json::from_str(&patched.config_json).unwrap();
        assert_eq!(v["aggregator"]["method"], "majority");
        // The HTTP API sees the same config.
        let (_, shown) = common::get_json(&svc.http(), "/api/v1/config");
        assert_eq!(shown["aggregator"]["method"], "majority");
        let e = c
            .patch_config(authed(mgmt::PatchConfigRequest {
                patch_json: json!({"breaker": {"failure_rate": 7.0}, "models": {"enabled": {"nope": true}}})
                    .to_string(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("failure_rate") && e.message().contains("nope"),
            "{}",
            e.message()
        );
        let models = c
            .list_models(authed(mgmt::ListModelsRequest {}))
            .await
            .unwrap()
            .into_inner()
            .models;
        let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            ["lstm-direction", "cnn-pattern", "xgb-direction", "ensemble-meta"]
        );
        assert!(
            models
                .iter()
                .all(|m| m.state == "ready" && m.circuit == "closed" && m.serving)
        );
        c.set_serving(authed(mgmt::SetServingRequest {
            model: "cnn-pattern".into(),
            serving: false,
        }))
        .await
        .unwrap();
        let models = c
            .list_models(authed(mgmt::ListModelsRequest {}))
            .await
            .unwrap()
            .into_inner()
            .models;
        assert!(!models[1].serving);
    });
    drop(rt);
    svc.stop();
}

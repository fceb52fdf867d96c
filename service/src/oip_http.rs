//! The Open Inference Protocol over HTTP (KServe v2 REST, as Triton serves it), so
//! `tritonclient.http` and KServe's clients work unchanged. The models and their semantics are
//! `oip.rs`; this file reads and writes the wire.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /v2` | server metadata: name, version, extensions |
//! | `GET /v2/models/{m}[/versions/{v}]` | model metadata |
//! | `GET /v2/models/{m}[/versions/{v}]/ready` | 200 when the model can take a call, else 400 |
//! | `POST /v2/models/{m}[/versions/{v}]/infer` | inference: JSON tensors, or the binary-data extension (`Inference-Header-Content-Length`) |
//! | `GET /v2/models[/{m}[/versions/{v}]]/stats` | Triton's statistics extension |
//! | `POST /v2/repository/index` | every model, its version and state |
//! | `POST /v2/repository/models/{m}/load`, `.../unload` | a member in or out of serving |
//!
//! (`/v2/health/live` and `/v2/health/ready` are the HTTP actor's.) Errors are the protocol's:
//! `{"error": "..."}` with 400, 401, 404, 413, 503 or 500. Infer and the repository's load and
//! unload need the bearer token when one is set (`[http].token`), like `/api/v1/predict`.
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::http::{AppState, BodyLimit, read_body};
use crate::oip::{self, InferRequest, Input, OipError, OutData};

/// The binary-data extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Registers the protocol's routes (the path-specific ones before `/v2/models/{m}`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v2", web::get().to(server_metadata))
        .route("/v2/models/stats", web::get().to(all_stats))
        .route("/v2/repository/index", web::post().to(repository_index))
        .route("/v2/repository/models/{model}/load", web::post().to(load))
        .route("/v2/repository/models/{model}/unload", web::post().to(unload))
        .route("/v2/models/{model}", web::get().to(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            web::get().to(model_metadata),
        )
        .route("/v2/models/{model}/ready", web::get().to(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            web::get().to(model_ready),
        )
        .route("/v2/models/{model}/infer", web::post().to(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            web::post().to(infer),
        )
        .route("/v2/models/{model}/stats", web::get().to(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            web::get().to(model_stats),
        );
}

/// The path's model and, when given, version.
#[derive(Deserialize)]
struct ModelPath {
    model: String,
    version: Option<String>,
}

pub fn error(e: &OipError) -> HttpResponse {
    let status = match e {
        OipError::NotFound(_) => StatusCode::NOT_FOUND,
        OipError::Invalid(_) => StatusCode::BAD_REQUEST,
        OipError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        OipError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        OipError::Refused(r) => StatusCode::from_u16(r.status()).unwrap_or(StatusCode::FORBIDDEN),
    };
    error_with(status, &e.message())
}

fn error_with(status: StatusCode, msg: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": oip::clip_message(msg.to_string()) }))
}

/// Who is calling: the bearer value of `Authorization` against the token and the keys.
fn caller(req: &HttpRequest, s: &AppState) -> Result<crate::tenants::Caller, Box<HttpResponse>> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(crate::tenants::bearer);
    s.caller(given)
        .map_err(|r| Box::new(error(&OipError::Refused(r))))
}

/// The HTTP actor's refusals on reading the body (413, 400) in the protocol's format.
fn protocol_error(r: HttpResponse) -> HttpResponse {
    let status = r.status();
    let msg = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "the body is larger than [http].max_body_bytes",
        _ => "the body could not be read",
    };
    error_with(status, msg)
}

async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "augur",
        "version": crate::SERVICE_VERSION,
        "extensions": oip::EXTENSIONS,
    }))
}

async fn model_metadata(s: web::Data<AppState>, p: web::Path<ModelPath>) -> HttpResponse {
    match oip::metadata(&s, &p.model, p.version.as_deref()) {
        Ok(m) => {
            let tensors = |ts: &[oip::TensorMeta]| -> Vec<Value> {
                ts.iter()
                    .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
                    .collect()
            };
            HttpResponse::Ok().json(json!({
                "name": m.name,
                "versions": m.versions,
                "platform": m.platform,
                "inputs": tensors(&m.inputs),
                "outputs": tensors(&m.outputs),
            }))
        }
        Err(e) => error(&e),
    }
}

async fn model_ready(s: web::Data<AppState>, p: web::Path<ModelPath>) -> HttpResponse {
    match oip::ready(&s, &p.model, p.version.as_deref()) {
        Ok(true) => HttpResponse::Ok().finish(),
        // The protocol: "non-200 status code" when not ready; Triton answers 400.
        Ok(false) => HttpResponse::BadRequest().finish(),
        Err(e) => error(&e),
    }
}

fn stats_json(v: Vec<oip::ModelStats>) -> HttpResponse {
    let d = |d: oip::Duration2| json!({"count": d.count, "ns": d.ns});
    let zero = oip::Duration2::default();
    let stats: Vec<Value> = v
        .into_iter()
        .map(|m| {
            json!({
                "name": m.name,
                "version": m.version,
                "last_inference": m.last_inference,
                "inference_count": m.inference_count,
                "execution_count": m.execution_count,
                "inference_stats": {
                    "success": d(m.success),
                    "fail": d(m.fail),
                    "queue": d(zero),
                    "compute_input": d(zero),
                    "compute_infer": d(m.compute_infer),
                    "compute_output": d(zero),
                    "cache_hit": d(zero),
                    "cache_miss": d(zero),
                },
                "batch_stats": [],
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "model_stats": stats }))
}

async fn all_stats(s: web::Data<AppState>) -> HttpResponse {
    match oip::statistics(&s, None, None) {
        Ok(v) => stats_json(v),
        Err(e) => error(&e),
    }
}

async fn model_stats(s: web::Data<AppState>, p: web::Path<ModelPath>) -> HttpResponse {
    match oip::statistics(&s, Some(&p.model), p.version.as_deref()) {
        Ok(v) => stats_json(v),
        Err(e) => error(&e),
    }
}

/// The body of `/v2/repository/index` may be empty (tritonclient sends none), or `{"ready":
/// true}` for the ready models only.
async fn repository_index(
    req: HttpRequest,
    s: web::Data<AppState>,
    limit: web::Data<BodyLimit>,
    payload: web::Payload,
) -> HttpResponse {
    let body = match read_body(&req, payload, limit.0).await {
        Ok(b) => b,
        Err(r) => return protocol_error(r),
    };
    let only_ready = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => match m.get("ready") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return error_with(StatusCode::BAD_REQUEST, "\"ready\" must be a boolean"),
            },
            _ => return error_with(StatusCode::BAD_REQUEST, "the body must be empty or a JSON object"),
        }
    };
    let entries: Vec<Value> = oip::index(&s)
        .into_iter()
        .filter(|e| !only_ready || e.state == "READY")
        .map(|e| json!({"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}))
        .collect();
    HttpResponse::Ok().json(entries)
}

async fn load(
    req: HttpRequest,
    s: web::Data<AppState>,
    p: web::Path<ModelPath>,
    limit: web::Data<BodyLimit>,
    payload: web::Payload,
) -> HttpResponse {
    set_loaded(req, s, p, limit, payload, true).await
}

async fn unload(
    req: HttpRequest,
    s: web::Data<AppState>,
    p: web::Path<ModelPath>,
    limit: web::Data<BodyLimit>,
    payload: web::Payload,
) -> HttpResponse {
    set_loaded(req, s, p, limit, payload, false).await
}

async fn set_loaded(
    req: HttpRequest,
    s: web::Data<AppState>,
    p: web::Path<ModelPath>,
    limit: web::Data<BodyLimit>,
    payload: web::Payload,
    on: bool,
) -> HttpResponse {
    let caller = match caller(&req, &s) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let body = match read_body(&req, payload, limit.0).await {
        Ok(b) => b,
        Err(r) => return protocol_error(r),
    };
    // `{}` or `{"parameters": {...}}`; a model's config or files in the parameters (Triton's
    // load from a request) are not supported: the versions are the repository's. `version`
    // (a string or a number) names one of them.
    let mut version = None;
    if !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => {
                let params = m.get("parameters").and_then(Value::as_object);
                match params.and_then(|p| p.get("version")) {
                    None => {}
                    Some(Value::String(v)) => version = Some(v.clone()),
                    Some(Value::Number(n)) if n.is_u64() => version = Some(n.to_string()),
                    Some(_) => {
                        return error_with(
                            StatusCode::BAD_REQUEST,
                            "parameter \"version\" must be a string or a whole number",
                        );
                    }
                }
                if let Some(k) = params
                    .into_iter()
                    .flat_map(|p| p.keys())
                    .find(|k| k.as_str() == "config" || k.starts_with("file:"))
                {
                    return error_with(
                        StatusCode::BAD_REQUEST,
                        &format!("parameter {k:?} is not supported: models come from the repository folder"),
                    );
                }
            }
            _ => return error_with(StatusCode::BAD_REQUEST, "the body must be empty or a JSON object"),
        }
    }
    match oip::set_loaded(&s, &caller, &p.model, on, version.as_deref()).await {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => error(&e),
    }
}

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Option<Vec<JsonOutput>>,
}

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Row-major numbers of a JSON `data` value (flat, or nested as the shape).
fn flatten(name: &str, v: &Value, out: &mut Vec<f32>) -> Result<(), String> {
    match v {
        Value::Array(a) => a.iter().try_for_each(|x| flatten(name, x, out)),
        Value::Number(n) => match n.as_f64() {
            Some(x) => {
                out.push(x as f32);
                Ok(())
            }
            None => Err(format!("input {name:?}: {n} is not a number")),
        },
        other => Err(format!("input {name:?}: {other} is not a number")),
    }
}

fn str_param(p: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("parameter {key:?} must be a string, got {other}")),
    }
}

fn count_param(p: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.as_i64().unwrap_or(i64::MAX))),
        Some(other) => Err(format!("parameter {key:?} must be an integer, got {other}")),
    }
}

fn bool_param(p: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!("parameter {key:?} must be a boolean, got {other}")),
    }
}

/// The request as the core reads it, and which outputs are wanted in binary.
#[derive(Debug)]
struct Parsed {
    req: InferRequest,
    /// Output name -> binary, for the outputs asked for by name.
    binary: Vec<(String, bool)>,
    /// Binary for the outputs not named (`binary_data_output`).
    binary_default: bool,
}

fn parse(json_part: &[u8], mut binary: &[u8]) -> Result<Parsed, String> {
    if json_part.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("the inference request must be a JSON object".into());
    }
    let r: JsonRequest =
        serde_json::from_slice(json_part).map_err(|e| format!("invalid inference request: {e}"))?;
    let mut errs = Vec::new();
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for i in r.inputs {
        let size = match i.parameters.get("binary_data_size") {
            None => None,
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) => Some(n),
                None => {
                    errs.push(format!(
                        "input {:?}: binary_data_size must be a count of bytes",
                        i.name
                    ));
                    continue;
                }
            },
        };
        let data = match (size, &i.data) {
            (Some(_), Some(_)) => Err(format!("input {:?}: both data and binary_data_size", i.name)),
            (None, None) => Err(format!("input {:?}: no data", i.name)),
            (Some(n), None) if n > binary.len() => Err(format!(
                "input {:?}: binary_data_size {n}, but only {} bytes follow the JSON",
                i.name,
                binary.len()
            )),
            (Some(n), None) => {
                let (raw, rest) = binary.split_at(n);
                binary = rest;
                oip::numbers_from_raw(&i.name, &i.datatype, raw).map_err(|e| e.message())
            }
            (None, Some(d)) => {
                if i.datatype != "FP32" && i.datatype != "FP64" {
                    Err(oip::unsupported(&i.name, &i.datatype).message())
                } else {
                    let mut out = Vec::new();
                    flatten(&i.name, d, &mut out).map(|()| out)
                }
            }
        };
        match data {
            Ok(data) => inputs.push(Input {
                name: i.name,
                datatype: i.datatype,
                shape: i.shape,
                data,
            }),
            Err(e) => errs.push(e),
        }
    }
    if !binary.is_empty() && errs.is_empty() {
        errs.push(format!(
            "{} bytes after the JSON belong to no input (binary_data_size)",
            binary.len()
        ));
    }
    let method = str_param(&r.parameters, "method").unwrap_or_else(|e| {
        errs.push(e);
        None
    });
    let timeframe = str_param(&r.parameters, "timeframe").unwrap_or_else(|e| {
        errs.push(e);
        None
    });
    let explain_top_k = count_param(&r.parameters, "explain_top_k").unwrap_or_else(|e| {
        errs.push(e);
        None
    });
    let binary_default = bool_param(&r.parameters, "binary_data_output")
        .unwrap_or_else(|e| {
            errs.push(e);
            None
        })
        .unwrap_or(false);
    let mut wanted = Vec::new();
    for o in r.outputs.iter().flatten() {
        if o.parameters.contains_key("classification") {
            errs.push(format!(
                "output {:?}: the classification extension is not supported",
                o.name
            ));
        }
        let b = bool_param(&o.parameters, "binary_data")
            .unwrap_or_else(|e| {
                errs.push(format!("output {:?}: {e}", o.name));
                None
            })
            .unwrap_or(binary_default);
        wanted.push((o.name.clone(), b));
    }
    if !errs.is_empty() {
        return Err(errs.join("; "));
    }
    Ok(Parsed {
        req: InferRequest {
            id: r.id.unwrap_or_default(),
            inputs,
            outputs: r
                .outputs
                .as_ref()
                .filter(|o| !o.is_empty())
                .map(|o| o.iter().map(|o| o.name.clone()).collect()),
            method,
            timeframe,
            explain_top_k,
        },
        binary: wanted,
        binary_default,
    })
}

async fn infer(
    req: HttpRequest,
    s: web::Data<AppState>,
    p: web::Path<ModelPath>,
    limit: web::Data<BodyLimit>,
    payload: web::Payload,
) -> HttpResponse {
    let caller = match caller(&req, &s) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Some(enc) = req.headers().get(header::CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return error_with(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "compressed requests are not supported: send the body uncompressed",
        );
    }
    let body = match read_body(&req, payload, limit.0).await {
        Ok(b) => b,
        Err(r) => return protocol_error(r),
    };
    let split = match req.headers().get(HEADER_LENGTH).map(HeaderValue::to_str) {
        None => body.len(),
        Some(Ok(v)) => match v.trim().parse::<usize>() {
            Ok(n) if n <= body.len() => n,
            _ => {
                return error_with(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "{HEADER_LENGTH} {v:?}: not a length within the body's {} bytes",
                        body.len()
                    ),
                );
            }
        },
        Some(Err(_)) => return error_with(StatusCode::BAD_REQUEST, &format!("{HEADER_LENGTH} is not text")),
    };
    let (json_part, binary) = body.split_at(split);
    let parsed = match parse(json_part, binary) {
        Ok(p) => p,
        Err(e) => return error_with(StatusCode::BAD_REQUEST, &e),
    };
    let r = match oip::infer(&s, &caller, &p.model, p.version.as_deref(), parsed.req).await {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let mut tail: Vec<u8> = Vec::new();
    let outputs: Vec<Value> = r
        .outputs
        .iter()
        .map(|o| {
            let binary = parsed
                .binary
                .iter()
                .find(|(n, _)| n == o.name)
                .map_or(parsed.binary_default, |(_, b)| *b);
            let mut params: Map<String, Value> = o
                .parameters
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            let mut t = json!({"name": o.name, "datatype": o.datatype, "shape": o.shape});
            if binary {
                let raw = o.data.raw();
                params.insert("binary_data_size".into(), json!(raw.len()));
                tail.extend_from_slice(&raw);
            } else {
                t["data"] = match &o.data {
                    OutData::Fp32(v) => json!(v),
                    OutData::Bytes(v) => json!(v),
                };
            }
            if !params.is_empty() {
                t["parameters"] = Value::Object(params);
            }
            t
        })
        .collect();
    let mut head = json!({
        "model_name": r.model_name,
        "model_version": r.model_version,
        "outputs": outputs,
    });
    if !r.id.is_empty() {
        head["id"] = json!(r.id);
    }
    let head = head.to_string();
    if tail.is_empty() {
        return HttpResponse::Ok().content_type("application/json").body(head);
    }
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&tail);
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((header::HeaderName::from_static(HEADER_LENGTH), head.len()))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_binary_input_takes_its_bytes_and_nothing_may_be_left_over() {
        let json_part = br#"{"inputs":[{"name":"window","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let raw: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let p = parse(json_part, &raw).unwrap();
        assert_eq!(p.req.inputs[0].data, [1.0, 2.0]);
        assert!(p.req.outputs.is_none());
        let mut more = raw.clone();
        more.push(0);
        assert!(
            parse(json_part, &more)
                .unwrap_err()
                .contains("belong to no input")
        );
        assert!(parse(json_part, &raw[..4]).unwrap_err().contains("only 4 bytes"));
    }

    #[test]
    fn test_json_data_may_be_nested_and_must_be_numbers() {
        let p = parse(
            br#"{"inputs":[{"name":"w","shape":[1,2],"datatype":"FP32","data":[[1,2.5]]}],
                "parameters":{"binary_data_output":true},"outputs":[{"name":"direction","parameters":{"binary_data":false}},{"name":"probabilities"}]}"#,
            &[],
        )
        .unwrap();
        assert_eq!(p.req.inputs[0].data, [1.0, 2.5]);
        assert_eq!(
            p.binary,
            [
                ("direction".to_string(), false),
                ("probabilities".to_string(), true)
            ]
        );
        let e = parse(
            br#"{"inputs":[{"name":"w","shape":[1],"datatype":"FP32","data":["x"]}]}"#,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        let e = parse(
            br#"{"inputs":[{"name":"w","shape":[1],"datatype":"INT8","data":[1]}]}"#,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        assert!(parse(b"[1]", &[]).is_err());
    }
}

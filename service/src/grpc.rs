//! The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService`
//! (`proto/inference/grpc_service.proto`, a wire-exact subset of Triton's, KServe's
//! `grpc_predict_v2.proto` plus the repository and statistics calls), so `tritonclient.grpc`
//! and KServe's clients work unchanged. On its own port (`[grpc]`), tonic on the actix
//! system's tokio runtime; the models and their semantics are `oip.rs`.
//!
//! Tensor data comes in `raw_input_contents` (what tritonclient sends) or in the typed
//! `contents` (`fp32_contents`, `fp64_contents`); outputs go out in `raw_output_contents`, one
//! entry per output in order (what tritonclient reads). Errors are gRPC statuses: NOT_FOUND,
//! INVALID_ARGUMENT, UNAVAILABLE, INTERNAL, UNAUTHENTICATED (a bearer token in the
//! `authorization` metadata when `[http].token` is set, for infer, load and unload).
use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::http::AppState;
use crate::oip::{self, InferRequest, Input, OipError};

/// The generated messages, server and client.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

/// Augur's management service (`proto/augur/management.proto`): messages, server and client.
pub mod mgmt {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/augur.management.v1.rs"));
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::infer_parameter::ParameterChoice;

pub struct Inference {
    state: AppState,
}

/// The service, ready to add to a tonic server: requests up to `max_message_bytes`, gzip and
/// deflate accepted.
pub fn service(state: AppState, max_message_bytes: usize) -> GrpcInferenceServiceServer<Inference> {
    use tonic::codec::CompressionEncoding;
    GrpcInferenceServiceServer::new(Inference { state })
        .max_decoding_message_size(max_message_bytes)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
}

/// Serves on `listener` until `stop`, on the calling thread (a runtime of its own): at most
/// 64 concurrent streams per connection and 32 calls in progress per connection, 30 s per call;
/// a key that is given but wrong or revoked is refused before the message is decoded.
pub fn serve(
    listener: std::net::TcpListener,
    state: AppState,
    max_message_bytes: usize,
    tls: Option<Arc<crate::tls::Reloading>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "the gRPC server's runtime did not start");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "the gRPC listener");
                return;
            }
        };
        let early = state.clone();
        let check = move |req: Request<()>| -> Result<Request<()>, Status> {
            let given = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(crate::tenants::bearer);
            // Without a key the method decides (metadata and health need none).
            if given.is_some() {
                early.caller(given).map_err(|r| status(OipError::Refused(r)))?;
            }
            Ok(req)
        };
        let management = mgmt::management_server::ManagementServer::new(Management { state: state.clone() })
            .max_decoding_message_size(1 << 20);
        let management = tonic::service::interceptor::InterceptedService::new(management, check.clone());
        let svc =
            tonic::service::interceptor::InterceptedService::new(service(state, max_message_bytes), check);
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(64)
            .concurrency_limit_per_connection(32)
            .timeout(std::time::Duration::from_secs(30))
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .add_service(svc)
            .add_service(management);
        let stop = async {
            let _ = stop.await;
        };
        let served = match tls {
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router.serve_with_incoming_shutdown(incoming, stop).await
            }
            Some(tls) => {
                let config = match tls.server_config(&[b"h2"]) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "the gRPC server's TLS config");
                        return;
                    }
                };
                tokio::spawn(tls.watch());
                router
                    .serve_with_incoming_shutdown(crate::tls::incoming(listener, config), stop)
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "the gRPC server stopped");
        }
    });
}

fn status(e: OipError) -> Status {
    let message = e.message();
    match e {
        OipError::NotFound(_) => Status::not_found(message),
        OipError::Invalid(_) => Status::invalid_argument(message),
        OipError::Unavailable(_) => Status::unavailable(message),
        OipError::Internal(_) => Status::internal(message),
        OipError::Refused(r) => match r.status() {
            401 => Status::unauthenticated(message),
            429 => Status::resource_exhausted(message),
            _ => Status::permission_denied(message),
        },
    }
}

/// INVALID_ARGUMENT with the message clipped.
fn invalid(m: String) -> Status {
    status(OipError::Invalid(m))
}

fn version(v: &str) -> Option<&str> {
    Some(v).filter(|v| !v.is_empty())
}

impl Inference {
    /// Who is calling: the bearer value of the `authorization` metadata against the token and
    /// the keys.
    fn caller<T>(&self, req: &Request<T>) -> Result<crate::tenants::Caller, Status> {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::tenants::bearer);
        self.state.caller(given).map_err(|r| status(OipError::Refused(r)))
    }
}

fn string_param(p: &HashMap<String, pb::InferParameter>, key: &str) -> Result<Option<String>, Status> {
    match p.get(key).and_then(|v| v.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::StringParam(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("parameter {key:?} must be a string"))),
    }
}

fn count_param(p: &HashMap<String, pb::InferParameter>, key: &str) -> Result<Option<i64>, Status> {
    match p.get(key).and_then(|v| v.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::Int64Param(n)) => Ok(Some(*n)),
        Some(ParameterChoice::Uint64Param(n)) => Ok(Some(i64::try_from(*n).unwrap_or(i64::MAX))),
        Some(_) => Err(invalid(format!("parameter {key:?} must be an integer"))),
    }
}

/// The request as the core reads it: each input's numbers from its raw contents (in input
/// order, when any are given) or its typed contents.
fn read_request(r: pb::ModelInferRequest) -> Result<InferRequest, Status> {
    if !r.raw_input_contents.is_empty() && r.raw_input_contents.len() != r.inputs.len() {
        return Err(invalid(format!(
            "{} raw_input_contents for {} inputs",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    let mut errs = Vec::new();
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (i, t) in r.inputs.into_iter().enumerate() {
        let data = match (r.raw_input_contents.get(i), &t.contents) {
            (Some(raw), None) => oip::numbers_from_raw(&t.name, &t.datatype, raw),
            (Some(_), Some(_)) => Err(OipError::Invalid(format!(
                "input {:?}: both raw and typed contents",
                t.name
            ))),
            (None, Some(c)) => match t.datatype.as_str() {
                "FP32" => Ok(c.fp32_contents.clone()),
                "FP64" => Ok(c.fp64_contents.iter().map(|&x| x as f32).collect()),
                other => Err(oip::unsupported(&t.name, other)),
            },
            (None, None) => Err(OipError::Invalid(format!("input {:?}: no data", t.name))),
        };
        match data {
            Ok(data) => inputs.push(Input {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
                data,
            }),
            Err(e) => errs.push(e.message()),
        }
    }
    let method = string_param(&r.parameters, "method");
    let timeframe = string_param(&r.parameters, "timeframe");
    let (method, timeframe) = match (method, timeframe) {
        (Ok(m), Ok(t)) => (m, t),
        (Err(e), _) | (_, Err(e)) => {
            errs.push(e.message().to_string());
            (None, None)
        }
    };
    let explain_top_k = count_param(&r.parameters, "explain_top_k").unwrap_or_else(|e| {
        errs.push(e.message().to_string());
        None
    });
    if !errs.is_empty() {
        return Err(invalid(errs.join("; ")));
    }
    if let Some(o) = r
        .outputs
        .iter()
        .find(|o| o.parameters.contains_key("classification"))
    {
        return Err(invalid(format!(
            "output {:?}: the classification extension is not supported",
            o.name
        )));
    }
    Ok(InferRequest {
        id: r.id,
        inputs,
        outputs: Some(r.outputs)
            .filter(|o| !o.is_empty())
            .map(|o| o.into_iter().map(|o| o.name).collect()),
        method,
        timeframe,
        explain_top_k,
    })
}

fn duration(d: oip::Duration2) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = crate::http::not_ready(&self.state).await.is_empty();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        r: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = r.into_inner();
        let ready = oip::ready(&self.state, &r.name, version(&r.version)).map_err(status)?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "augur".into(),
            version: crate::SERVICE_VERSION.into(),
            extensions: oip::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        let m = oip::metadata(&self.state, &r.name, version(&r.version)).map_err(status)?;
        let tensors = |ts: Vec<oip::TensorMeta>| {
            ts.into_iter()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t.name.into(),
                    datatype: t.datatype.into(),
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn model_infer(
        &self,
        r: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let caller = self.caller(&r)?;
        let r = r.into_inner();
        let (name, ver) = (r.model_name.clone(), r.model_version.clone());
        let req = read_request(r)?;
        let resp = oip::infer(&self.state, &caller, &name, version(&ver), req)
            .await
            .map_err(status)?;
        let mut outputs = Vec::with_capacity(resp.outputs.len());
        let mut raw = Vec::with_capacity(resp.outputs.len());
        for o in resp.outputs {
            raw.push(o.data.raw());
            outputs.push(pb::model_infer_response::InferOutputTensor {
                name: o.name.into(),
                datatype: o.datatype.into(),
                shape: o.shape,
                parameters: o
                    .parameters
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            pb::InferParameter {
                                parameter_choice: Some(ParameterChoice::StringParam(v)),
                            },
                        )
                    })
                    .collect(),
                contents: None,
            });
        }
        Ok(Response::new(pb::ModelInferResponse {
            model_name: resp.model_name,
            model_version: resp.model_version,
            id: resp.id,
            parameters: HashMap::new(),
            outputs,
            raw_output_contents: raw,
        }))
    }

    async fn model_statistics(
        &self,
        r: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = r.into_inner();
        let stats = oip::statistics(&self.state, version(&r.name), version(&r.version)).map_err(status)?;
        let zero = oip::Duration2::default();
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: stats
                .into_iter()
                .map(|m| pb::ModelStatistics {
                    name: m.name,
                    version: m.version,
                    last_inference: m.last_inference,
                    inference_count: m.inference_count,
                    execution_count: m.execution_count,
                    inference_stats: Some(pb::InferStatistics {
                        success: duration(m.success),
                        fail: duration(m.fail),
                        queue: duration(zero),
                        compute_input: duration(zero),
                        compute_infer: duration(m.compute_infer),
                        compute_output: duration(zero),
                        cache_hit: duration(zero),
                        cache_miss: duration(zero),
                    }),
                    ..Default::default()
                })
                .collect(),
        }))
    }

    async fn repository_index(
        &self,
        r: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let only_ready = r.into_inner().ready;
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: oip::index(&self.state)
                .into_iter()
                .filter(|e| !only_ready || e.state == "READY")
                .map(|e| pb::repository_index_response::ModelIndex {
                    name: e.name,
                    version: e.version,
                    state: e.state.into(),
                    reason: e.reason,
                })
                .collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let caller = self.caller(&r)?;
        let r = r.into_inner();
        if let Some(k) = r
            .parameters
            .keys()
            .find(|k| k.as_str() == "config" || k.starts_with("file:"))
        {
            return Err(invalid(format!(
                "parameter {k:?} is not supported: models come from the repository folder"
            )));
        }
        // `version`: one of the repository's versions (a string or an int64).
        use pb::model_repository_parameter::ParameterChoice as P;
        let version = match r
            .parameters
            .get("version")
            .and_then(|p| p.parameter_choice.as_ref())
        {
            None => None,
            Some(P::StringParam(v)) => Some(v.clone()),
            Some(P::Int64Param(v)) if *v >= 0 => Some(v.to_string()),
            Some(_) => {
                return Err(invalid(
                    "parameter \"version\" must be a string or a whole number".to_string(),
                ));
            }
        };
        oip::set_loaded(&self.state, &caller, &r.model_name, true, version.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let caller = self.caller(&r)?;
        let r = r.into_inner();
        oip::set_loaded(&self.state, &caller, &r.model_name, false, None)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

/// Augur's management service: the config and the models, for the operator.
pub struct Management {
    state: AppState,
}

impl Management {
    /// The operator only (its token, or anyone when none is set and there are no keys).
    fn operator<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::tenants::bearer);
        match self.state.caller(given) {
            Ok(crate::tenants::Caller::Tenant(t)) => Err(Status::permission_denied(format!(
                "tenant {}: management is the operator's (the [http].token)",
                t.name
            ))),
            Ok(_) => Ok(()),
            Err(r) => Err(status(OipError::Refused(r))),
        }
    }

    fn config_json(&self) -> Result<String, Status> {
        let c = self
            .state
            .config
            .read()
            .map_err(|_| Status::internal("config lock poisoned"))?
            .clone();
        crate::http::masked(&c)
            .map(|v| v.to_string())
            .map_err(Status::internal)
    }
}

#[tonic::async_trait]
impl mgmt::management_server::Management for Management {
    async fn get_config(
        &self,
        r: Request<mgmt::GetConfigRequest>,
    ) -> Result<Response<mgmt::ConfigReply>, Status> {
        self.operator(&r)?;
        Ok(Response::new(mgmt::ConfigReply {
            config_json: self.config_json()?,
        }))
    }

    async fn patch_config(
        &self,
        r: Request<mgmt::PatchConfigRequest>,
    ) -> Result<Response<mgmt::ConfigReply>, Status> {
        self.operator(&r)?;
        let patch = r.into_inner().patch_json;
        match crate::http::apply_patch(&self.state, patch.as_bytes()).await {
            Ok(_) => Ok(Response::new(mgmt::ConfigReply {
                config_json: self.config_json()?,
            })),
            Err((code, errs)) if code.is_client_error() => Err(invalid(errs.join("; "))),
            Err((_, errs)) => Err(Status::internal(errs.join("; "))),
        }
    }

    async fn list_models(
        &self,
        r: Request<mgmt::ListModelsRequest>,
    ) -> Result<Response<mgmt::ListModelsReply>, Status> {
        self.operator(&r)?;
        use std::sync::atomic::Ordering::Relaxed;
        let models = self
            .state
            .pipeline
            .all_gates()
            .map(|g| {
                let e = g.executor();
                let state = if e.is_down() {
                    "down"
                } else if e.is_ready() {
                    "ready"
                } else {
                    "loading"
                };
                mgmt::ModelStatus {
                    id: g.info.id.to_string(),
                    version: g.version().to_string(),
                    family: g.info.family.to_string(),
                    kind: g.info.kind.to_string(),
                    state: state.into(),
                    circuit: match g.state() {
                        augur_actors::breaker::CircuitState::Closed => "closed",
                        augur_actors::breaker::CircuitState::Open => "open",
                        augur_actors::breaker::CircuitState::HalfOpen => "half_open",
                        augur_actors::breaker::CircuitState::Faulted => "faulted",
                    }
                    .into(),
                    serving: g.enabled.load(Relaxed),
                    calls: g.calls.load(Relaxed),
                    failures: g.failures.load(Relaxed),
                    restarts: g.restarts.load(Relaxed),
                }
            })
            .collect();
        Ok(Response::new(mgmt::ListModelsReply { models }))
    }

    async fn set_serving(
        &self,
        r: Request<mgmt::SetServingRequest>,
    ) -> Result<Response<mgmt::SetServingReply>, Status> {
        self.operator(&r)?;
        let r = r.into_inner();
        oip::set_loaded(
            &self.state,
            &crate::tenants::Caller::Operator,
            &r.model,
            r.serving,
            None,
        )
        .await
        .map_err(status)?;
        Ok(Response::new(mgmt::SetServingReply {}))
    }
}

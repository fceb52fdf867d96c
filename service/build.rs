//! Compiles the wire contract (`proto/` at the workspace root) without a protoc binary, and
//! links libtorch for this crate's tests.
use std::path::PathBuf;

include!("../build/link_libtorch.rs");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let fds = protox::compile(["augur.proto"], ["../proto"])?;
    // The descriptor set also ships inside the binary, for peers in other languages
    // (the Python benchmark baseline builds its message classes from it).
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("augur.fds"), prost::Message::encode_to_vec(&fds))?;
    prost_build::Config::new().compile_fds(fds)?;
    // The Open Inference Protocol's gRPC service (Triton's GRPCInferenceService, a wire-exact
    // subset of its grpc_service.proto): server and client (the tests' client).
    // With it, Augur's management service (the run-time config and the models).
    let fds = protox::compile(
        ["inference/grpc_service.proto", "augur/management.proto"],
        ["../proto"],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    link_libtorch();
    Ok(())
}

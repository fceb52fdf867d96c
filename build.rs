//! Compiles the wire contract (proto/) without a protoc binary, and links libtorch so that
//! `target/*/augur` runs without LD_LIBRARY_PATH and keeps CUDA where libtorch has it.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["augur.proto"], ["proto"])?;
    // The descriptor set also ships inside the binary, for peers in other languages
    // (the Python benchmark baseline builds its message classes from it).
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("augur.fds"), prost::Message::encode_to_vec(&fds))?;
    prost_build::Config::new().compile_fds(fds)?;

    // torch-sys (`links = "tch"`) tells its direct dependents where libtorch lives.
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let lib = PathBuf::from(lib);
        // tch's own rpath does not reach our binaries: set one for every target we link.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        println!("cargo:rustc-link-search=native={}", lib.display());
        // `--as-needed` would drop libtorch_cuda.so (nothing references it by symbol),
        // and with it every CUDA kernel: CUDA would then silently be unavailable.
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-ltorch");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
    Ok(())
}

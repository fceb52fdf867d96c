// Included by the build script of every package that links libtorch into a binary or a test
// (`include!`): torch-sys (`links = "tch"`) tells only its direct dependents where libtorch
// lives, and tch's own rpath does not reach our binaries.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let lib = std::path::PathBuf::from(lib);
        // An rpath for every target of the package: `target/*/augur` and the test binaries
        // run without LD_LIBRARY_PATH.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        println!("cargo:rustc-link-search=native={}", lib.display());
        // `--as-needed` would drop libtorch_cuda.so (nothing references it by symbol), and
        // with it every CUDA kernel: CUDA would then silently be unavailable.
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-ltorch");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
}

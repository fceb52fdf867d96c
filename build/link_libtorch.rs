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
        // libtorch_cuda.so is not linked: torch-sys names it, but nothing references it by
        // symbol, so `--as-needed` (rustc's default) leaves it out, and libtorch.so (which
        // needs it) with it. A CPU-only run never maps CUDA; runtime/src/cuda.rs opens it
        // when a CUDA device is asked for, from this folder (also given to the code).
        println!("cargo:rustc-env=AUGUR_LIBTORCH_LIB={}", lib.display());
    }
}

//! Links libtorch into the fuzz targets (they link augur-service and augur-runtime, which use tch):
//! the same rpath as the root package's binaries, so they run without LD_LIBRARY_PATH.
include!("../build/link_libtorch.rs");

fn main() {
    link_libtorch();
}

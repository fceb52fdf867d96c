//! Links libtorch into the `augur` binary, its tests and benchmarks.
include!("build/link_libtorch.rs");

fn main() {
    link_libtorch();
}

//! Links libtorch for this crate's tests.
include!("../build/link_libtorch.rs");

fn main() {
    link_libtorch();
}

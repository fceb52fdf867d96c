//! Any bytes as a model folder's `manifest.toml` (`Manifest::load`): a manifest or a list of
//! problems, never a panic, and the promises of runtime/tests/props.rs:
//! - an accepted manifest has no problem, knows its folder, and its row (window x features
//!   values) has a length that neither overflows nor wraps;
//! - a refused one is an `invalid_manifest` error naming the file, with at least one problem,
//!   none blank;
//! - an I/O error only for a file that is not UTF-8; no other kind of error.
//!
//! The runtime has no parse-from-text entry point (`load` reads `<dir>/manifest.toml`), so the
//! bytes go through one scratch folder, rewritten for every input: the real entry point, at
//! the price of a small file write and read per run.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use augur_runtime::{Manifest, RuntimeError};
use libfuzzer_sys::fuzz_target;

/// The scratch folder; it lives as long as the process (scripts/fuzz.sh points TMPDIR into
/// fuzz/target and clears it after the run).
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| match tempfile::Builder::new().prefix("augur-fuzz-manifest-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            // The harness cannot run at all: not a finding of any input.
            eprintln!("fuzz/manifest: cannot create a scratch folder: {e}");
            std::process::exit(2);
        }
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let file: PathBuf = dir.join("manifest.toml");
    if let Err(e) = std::fs::write(&file, data) {
        eprintln!("fuzz/manifest: cannot write {}: {e}", file.display());
        std::process::exit(2);
    }
    match Manifest::load(dir) {
        Ok(m) => {
            let problems = m.problems();
            assert!(problems.is_empty(), "accepted with problems {problems:?}");
            assert!(m.dir.as_path() == dir, "{:?} is not {:?}", m.dir, dir);
            let row = m.window.checked_mul(m.features);
            assert!(
                row.is_some(),
                "window {} x features {} overflows a usize, yet the manifest is accepted",
                m.window,
                m.features
            );
            assert_eq!(Some(m.row_len()), row);
        }
        Err(e) => match &e {
            RuntimeError::Manifest { path, problems } => {
                assert!(*path == file, "{path:?} is not {file:?}");
                assert!(!problems.is_empty(), "an invalid manifest without problems");
                assert!(problems.iter().all(|p| !p.trim().is_empty()), "a blank problem: {problems:?}");
                assert_eq!(e.code(), "invalid_manifest");
                assert!(!e.to_string().is_empty());
            }
            RuntimeError::Io { .. } => {
                assert!(std::str::from_utf8(data).is_err(), "an I/O error for a UTF-8 file: {e}");
            }
            _ => panic!("unexpected error kind {}: {e}", e.code()),
        },
    }
});

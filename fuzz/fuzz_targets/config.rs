//! Any text as the config file (`Config::from_sources`, no environment): a config or a list of
//! problems, never a panic, and the promises of service/tests/props.rs:
//! - a refusal lists at least one problem, none blank;
//! - what is accepted has no problem (`problems()`, `runtime_problems()`), and written back out
//!   it loads to itself.
//!
//! Relative paths in the text (`models_dir = "models"`) resolve from the working directory:
//! scripts/fuzz.sh runs from the repository root, where the shipped config.toml seed is valid.
#![no_main]

use augur_service::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_sources(text, std::iter::empty()) {
        Err(e) => {
            assert!(!e.0.is_empty(), "an error that lists no problem");
            assert!(e.0.iter().all(|p| !p.trim().is_empty()), "a blank problem: {:?}", e.0);
            assert!(e.to_string().starts_with("invalid configuration:"), "{e}");
        }
        Ok(cfg) => {
            let problems = cfg.problems();
            assert!(problems.is_empty(), "accepted with problems {problems:?}");
            let runtime = cfg.runtime_problems();
            assert!(runtime.is_empty(), "accepted with runtime problems {runtime:?}");
            let written = match toml::to_string(&cfg) {
                Ok(t) => t,
                Err(e) => panic!("an accepted config cannot be written out: {e}"),
            };
            match Config::from_sources(&written, std::iter::empty()) {
                Ok(again) => assert!(again == cfg, "written out and read back, it changed:\n{written}"),
                Err(e) => panic!("an accepted config, written out, is refused: {:?}\n{written}", e.0),
            }
        }
    }
});

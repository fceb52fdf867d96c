//! The HTTP API fuzzed through its own OpenAPI document by schemathesis (scripts/schemathesis.sh:
//! nats-server and this build's `augur serve`, every check, three passes) with few examples
//! per operation, so that scripts/test.sh runs it; the long settings are the script's own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

/// Examples per operation here (the script's default is 200).
const EXAMPLES: &str = "25";

#[test]
fn test_schemathesis_finds_no_failure_through_the_openapi_document() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schemathesis = root.join(".venv/bin/schemathesis");
    assert!(
        schemathesis.is_file(),
        "schemathesis is not installed ({} is missing): run scripts/bootstrap.sh, which installs \
         tests/schemathesis/requirements.txt into the venv",
        schemathesis.display()
    );
    let out_dir = root.join("target/schemathesis-test");
    let out = Command::new("bash")
        .arg(root.join("scripts/schemathesis.sh"))
        .current_dir(root)
        .env("AUGUR_BIN", env!("CARGO_BIN_EXE_augur"))
        .env("AUGUR_SCHEMATHESIS_EXAMPLES", EXAMPLES)
        .env("AUGUR_SCHEMATHESIS_OUT", &out_dir)
        .output()
        .expect("bash runs scripts/schemathesis.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The summary table (and the command lines, on stderr) for the test's output.
    println!("{stderr}");
    println!(
        "{}",
        stdout
            .lines()
            .skip_while(|l| !l.starts_with("schemathesis (seed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        out.status.success(),
        "scripts/schemathesis.sh failed ({}); reports and logs in {}\n--- stdout (end) ---\n{}\n--- stderr (end) ---\n{}",
        out.status,
        out_dir.display(),
        tail(&stdout, 200),
        tail(&stderr, 60)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

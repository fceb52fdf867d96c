//! deploy/alerts.yml: valid rules (`promtool check rules`), each firing and staying quiet as
//! its unit tests say (`promtool test rules deploy/alerts_test.yml`), and every metric they
//! read is one the service exports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::process::Command;

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(common::root().join("deploy"))
        .output()
        .expect("promtool (Debian prometheus, installed by scripts/bootstrap.sh)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn test_alert_rules_are_valid_and_fire_as_their_unit_tests_say() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
}

#[test]
fn test_alert_rules_read_only_metrics_the_service_exports() {
    let rules = std::fs::read_to_string(common::root().join("deploy/alerts.yml")).unwrap();
    let telemetry = std::fs::read_to_string(common::root().join("actors/src/telemetry.rs")).unwrap();
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("augur_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 6, "{names:?}");
    for n in names {
        assert!(
            telemetry.contains(&format!("\"{n}\"")),
            "{n} is not a metric of actors/src/telemetry.rs"
        );
    }
}

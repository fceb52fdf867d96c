//! Property tests of the manifest loader: whatever `manifest.toml` holds (noise, damaged
//! copies of the shipped manifests, or well-typed manifests with inconsistent values),
//! `Manifest::load` answers a manifest or a list of problems, never a panic; it accepts a
//! well-typed manifest exactly when the documented checks of `Manifest::problems` pass
//! (window x features computed without overflow), and an accepted manifest's row length
//! fits in a usize.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use augur_runtime::{Manifest, RuntimeError};
use proptest::prelude::*;
use proptest::sample::Index;

/// The shipped manifests: valid as written.
const SHIPPED: [&str; 4] = [
    include_str!("../../models/cnn-pattern/1/manifest.toml"),
    include_str!("../../models/ensemble-meta/1/manifest.toml"),
    include_str!("../../models/lstm-direction/1/manifest.toml"),
    include_str!("../../models/xgb-direction/1/manifest.toml"),
];

/// 2^62 + 1: times 4 it is 2^64 + 4, which a wrapping multiplication reads as 4.
const WRAPS_TO_4_TIMES_4: i64 = (1 << 62) + 1;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Writes `manifest.toml` into a fresh folder and loads it (the folder lives as long as the
/// returned guard).
fn load(bytes: &[u8]) -> (tempfile::TempDir, Result<Manifest, RuntimeError>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.toml"), bytes).unwrap();
    let r = Manifest::load(dir.path());
    (dir, r)
}

/// What any answer satisfies: a manifest without problems that knows its folder, or a
/// manifest error naming the file with at least one problem; an I/O error only for a file
/// that is not UTF-8.
fn check_answer(dir: &Path, bytes: &[u8], r: &Result<Manifest, RuntimeError>) -> Result<(), TestCaseError> {
    match r {
        Ok(m) => {
            prop_assert!(
                m.problems().is_empty(),
                "accepted with problems {:?}",
                m.problems()
            );
            prop_assert!(m.dir.as_path() == dir, "{:?} is not {:?}", m.dir, dir);
        }
        Err(RuntimeError::Manifest { path, problems }) => {
            prop_assert!(path == &dir.join("manifest.toml"), "{:?}", path);
            prop_assert!(!problems.is_empty(), "an invalid manifest without problems");
            prop_assert!(problems.iter().all(|p| !p.trim().is_empty()), "{:?}", problems);
            let e = r.as_ref().err().unwrap();
            prop_assert_eq!(e.code(), "invalid_manifest");
            prop_assert!(!e.to_string().is_empty());
        }
        Err(RuntimeError::Io { .. }) => prop_assert!(
            std::str::from_utf8(bytes).is_err(),
            "an I/O error for a UTF-8 file: {:?}",
            r.as_ref().err()
        ),
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "unexpected error kind {}: {e}",
                e.code()
            )));
        }
    }
    Ok(())
}

/// A shipped manifest with lines dropped and characters replaced or removed; `true` when it
/// came out unchanged.
fn damaged_shipped() -> impl Strategy<Value = (Vec<u8>, bool)> {
    (
        prop::sample::select(SHIPPED.to_vec()),
        prop::collection::vec((any::<Index>(), prop::option::of(any::<char>())), 0..4),
        prop::option::of(any::<Index>()),
    )
        .prop_map(|(text, edits, drop_line)| {
            let pristine = edits.is_empty() && drop_line.is_none();
            let mut lines: Vec<&str> = text.lines().collect();
            if let Some(i) = drop_line
                && !lines.is_empty()
            {
                lines.remove(i.index(lines.len()));
            }
            let mut chars: Vec<char> = lines.join("\n").chars().collect();
            for (i, c) in edits {
                if chars.is_empty() {
                    break;
                }
                let n = i.index(chars.len());
                match c {
                    Some(c) => chars[n] = c,
                    None => {
                        chars.remove(n);
                    }
                }
            }
            (chars.into_iter().collect::<String>().into_bytes(), pristine)
        })
}

/// Manifest-shaped lines: known keys with values of any type, section headers, junk.
fn toml_ish() -> impl Strategy<Value = String> {
    let key = prop::sample::select(strings(&[
        "id",
        "version",
        "kind",
        "family",
        "file",
        "description",
        "input",
        "feature_set",
        "members",
        "window",
        "features",
        "layout",
        "classes",
        "timeframes",
        "mean",
        "std",
        "clip",
        "horizon_bars",
        "threshold_k",
        "inputs",
        "outputs",
        "count",
        "input_shape",
    ]));
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(strings(&[
            "\"torchscript\"",
            "\"xgboost-json\"",
            "\"features\"",
            "\"member_probabilities\"",
            "\"flat\"",
            "\"sequence\"",
            "\"channels\"",
            "[]",
            "[\"a\", \"b\"]",
            "[1, 2, 3]",
            "nan",
            "inf",
            "-1",
            "0",
            "18446744073709551615",
            "{}",
            "true",
            "1.5",
        ])),
        "[^\n]{0,16}",
    ];
    let line = prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(strings(&[
            "[label]", "[provenance]", "[metrics]", "[normalization]", "[golden]", "[bogus]",
        ])),
        1 => ".{0,30}",
    ];
    prop::collection::vec(line, 0..24).prop_map(|lines| lines.join("\n"))
}

fn any_file() -> impl Strategy<Value = (Vec<u8>, bool)> {
    prop_oneof![
        3 => damaged_shipped(),
        2 => toml_ish().prop_map(|s| (s.into_bytes(), false)),
        1 => ".{0,2000}".prop_map(|s| (s.into_bytes(), false)),
        1 => "[ -~\n]{0,1500}".prop_map(|s| (s.into_bytes(), false)),
        1 => prop::collection::vec(any::<u8>(), 0..2048).prop_map(|b| (b, false)),
    ]
}

/// A well-typed manifest: every field parses; the values may disagree.
#[derive(Debug, Clone)]
struct Spec {
    id: String,
    kind: &'static str,
    input: &'static str,
    layout: &'static str,
    feature_set: Option<String>,
    members: Vec<String>,
    window: i64,
    features: i64,
    classes: Vec<String>,
    timeframes: Vec<String>,
    normalization: Option<(Vec<f64>, Vec<f64>, f64)>,
    golden: Option<(i64, Vec<i64>)>,
}

/// A window or feature count: mostly small, sometimes 0, or big enough that a product
/// overflows.
fn size() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => 1i64..=64,
        1 => Just(0i64),
        1 => Just(1i64 << 32),
        1 => Just(WRAPS_TO_4_TIMES_4),
        1 => 0..=i64::MAX,
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let mean = prop_oneof![8 => -10.0..10.0f64, 1 => Just(f64::NAN), 1 => Just(f64::INFINITY)];
    let std = prop_oneof![
        8 => 0.01..10.0f64,
        1 => Just(0.0f64),
        1 => Just(-1.0f64),
        1 => Just(f64::NAN),
    ];
    let clip = prop_oneof![
        6 => 0.5..10.0f64,
        1 => Just(0.0f64),
        1 => Just(-1.0f64),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
    ];
    let normalization = prop::option::of((
        prop::collection::vec(mean, 0..=64),
        prop::collection::vec(std, 0..=64),
        clip,
        any::<bool>(),
    ));
    let golden = prop::option::of((0i64..300, prop::collection::vec(0i64..300, 0..4), any::<bool>()));
    let classes = prop::sample::select(vec![
        Vec::new(),
        strings(&["up"]),
        strings(&["down", "up"]),
        strings(&["short", "neutral", "long"]),
    ]);
    (
        (
            prop_oneof![6 => "[a-z][a-z-]{0,15}", 1 => Just(String::new()), 1 => Just("  ".to_string())],
            prop::sample::select(vec!["torchscript", "xgboost-json"]),
            prop::sample::select(vec!["features", "member_probabilities"]),
            prop::sample::select(vec!["sequence", "channels", "flat"]),
            prop::option::of(prop_oneof![4 => Just("ta-v1".to_string()), 1 => Just(String::new())]),
            prop::collection::vec(
                prop::sample::select(strings(&["lstm-direction", "cnn-pattern", "xgb-direction"])),
                0..4,
            ),
        ),
        (
            size(),
            size(),
            classes,
            prop::collection::vec(prop::sample::select(strings(&["1m", "1h", "1d"])), 0..3),
            normalization,
            golden,
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (id, kind, input, layout, feature_set, members),
                (window, features, classes, timeframes, normalization, golden, consistent),
            )| {
                let (mut window, mut features) = (window, features);
                // Often make a stacker's shape agree with its members, so that the other
                // checks decide.
                if consistent && input == "member_probabilities" {
                    window = 1;
                    features = (members.len() * classes.len()) as i64;
                }
                let normalization = normalization.map(|(mut mean, mut std, clip, exact)| {
                    if exact && features <= 64 {
                        mean.resize(features as usize, 0.0);
                        std.resize(features as usize, 1.0);
                    }
                    (mean, std, clip)
                });
                let golden = golden.map(|(count, shape, exact)| {
                    (
                        count,
                        if exact {
                            vec![count, window, features]
                        } else {
                            shape
                        },
                    )
                });
                Spec {
                    id,
                    kind,
                    input,
                    layout,
                    feature_set,
                    members,
                    window,
                    features,
                    classes,
                    timeframes,
                    normalization,
                    golden,
                }
            },
        )
}

fn manifest_text(s: &Spec) -> String {
    use toml::Value as V;
    let text = |x: &str| V::String(x.to_string());
    let list = |v: &[String]| V::Array(v.iter().cloned().map(V::String).collect());
    let floats = |v: &[f64]| V::Array(v.iter().copied().map(V::Float).collect());
    let mut t = toml::Table::new();
    t.insert("id".into(), text(&s.id));
    t.insert("version".into(), text("1"));
    t.insert("kind".into(), text(s.kind));
    t.insert("family".into(), text("lstm"));
    t.insert("file".into(), text("model.pt"));
    t.insert("input".into(), text(s.input));
    if let Some(f) = &s.feature_set {
        t.insert("feature_set".into(), text(f));
    }
    t.insert("members".into(), list(&s.members));
    t.insert("window".into(), V::Integer(s.window));
    t.insert("features".into(), V::Integer(s.features));
    t.insert("layout".into(), text(s.layout));
    t.insert("classes".into(), list(&s.classes));
    t.insert("timeframes".into(), list(&s.timeframes));
    if let Some((mean, std, clip)) = &s.normalization {
        let mut n = toml::Table::new();
        n.insert("mean".into(), floats(mean));
        n.insert("std".into(), floats(std));
        n.insert("clip".into(), V::Float(*clip));
        t.insert("normalization".into(), V::Table(n));
    }
    let mut label = toml::Table::new();
    label.insert("horizon_bars".into(), V::Integer(5));
    label.insert("threshold_k".into(), V::Float(0.5));
    t.insert("label".into(), V::Table(label));
    t.insert("provenance".into(), V::Table(toml::Table::new()));
    t.insert("metrics".into(), V::Table(toml::Table::new()));
    if let Some((count, shape)) = &s.golden {
        let mut g = toml::Table::new();
        g.insert("inputs".into(), text("golden_inputs.f32"));
        g.insert("outputs".into(), text("golden_outputs.f32"));
        g.insert("count".into(), V::Integer(*count));
        g.insert(
            "input_shape".into(),
            V::Array(shape.iter().copied().map(V::Integer).collect()),
        );
        t.insert("golden".into(), V::Table(g));
    }
    toml::to_string(&t).unwrap()
}

/// The documented checks, written from the manifest's docs (window x features in exact
/// arithmetic): what is wrong with the spec, empty when it is valid.
fn expected_problems(s: &Spec) -> Vec<&'static str> {
    let (w, f) = (s.window as usize, s.features as usize);
    let mut p = Vec::new();
    if s.id.trim().is_empty() {
        p.push("id is empty");
    }
    if w == 0 {
        p.push("window is 0");
    }
    if f == 0 {
        p.push("features is 0");
    }
    if w.checked_mul(f)
        .is_none_or(|r| r > augur_runtime::manifest::MAX_ROW_VALUES)
    {
        p.push("one input row over the limit");
    }
    if s.classes.len() < 2 {
        p.push("fewer than 2 classes");
    }
    if s.timeframes.is_empty() {
        p.push("no timeframes");
    }
    if s.input == "features" {
        if s.feature_set.as_deref().unwrap_or("").is_empty() {
            p.push("features without a feature set");
        }
    } else if s.members.is_empty() {
        p.push("member probabilities without members");
    } else if w.checked_mul(f) != Some(s.members.len() * s.classes.len()) {
        p.push("window x features is not members x classes");
    }
    if let Some((mean, std, clip)) = &s.normalization {
        if mean.len() != f || std.len() != f {
            p.push("normalization length is not features");
        }
        if mean.iter().chain(std).any(|x| !x.is_finite()) {
            p.push("normalization holds a non-finite value");
        }
        if std.iter().any(|x| *x <= 0.0) {
            p.push("normalization std not positive");
        }
        if clip.is_nan() || *clip <= 0.0 {
            p.push("clip not positive");
        }
    }
    if let Some((count, shape)) = &s.golden
        && *shape != [*count, s.window, s.features]
    {
        p.push("golden shape is not [count, window, features]");
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any file: a manifest without problems or a manifest error listing problems (an I/O
    /// error only when it is not UTF-8), never a panic; a shipped manifest loads as is.
    #[test]
    fn test_any_manifest_file_is_a_manifest_or_a_list_of_problems(file in any_file()) {
        let (bytes, pristine) = file;
        let (dir, r) = load(&bytes);
        check_answer(dir.path(), &bytes, &r)?;
        if pristine {
            prop_assert!(r.is_ok(), "a shipped manifest is refused: {:?}", r.as_ref().err());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A well-typed manifest is accepted exactly when every documented check passes.
    #[test]
    fn test_a_manifest_is_accepted_exactly_when_its_checks_pass(s in spec()) {
        let text = manifest_text(&s);
        let (dir, r) = load(text.as_bytes());
        check_answer(dir.path(), text.as_bytes(), &r)?;
        let want = expected_problems(&s);
        match &r {
            Ok(_) => prop_assert!(want.is_empty(), "accepted despite {:?}:\n{}", want, text),
            Err(e) => prop_assert!(!want.is_empty(), "refused a valid manifest: {}\n{}", e, text),
        }
    }

    /// An accepted manifest's row (window x features values) has a length: `row_len()`
    /// neither overflows (a panic in debug builds) nor wraps.
    #[test]
    fn test_an_accepted_manifest_has_a_row_length(s in spec()) {
        let (_dir, r) = load(manifest_text(&s).as_bytes());
        if let Ok(m) = r {
            prop_assert!(
                m.window.checked_mul(m.features).is_some(),
                "window {} x features {} overflows a usize, yet the manifest is accepted",
                m.window,
                m.features
            );
        }
    }
}

/// The stacker check in exact arithmetic: 2 members x 2 classes = 4 inputs, and a window of
/// 2^62 + 1 by 4 features is 2^64 + 4 values, not 4 (a wrapping product would say 4, a
/// checked debug build would panic).
#[test]
fn test_a_window_times_features_that_overflows_is_a_problem_not_a_match() {
    let s = Spec {
        id: "stacker".into(),
        kind: "torchscript",
        input: "member_probabilities",
        layout: "flat",
        feature_set: None,
        members: strings(&["lstm-direction", "cnn-pattern"]),
        window: WRAPS_TO_4_TIMES_4,
        features: 4,
        classes: strings(&["down", "up"]),
        timeframes: strings(&["1m"]),
        normalization: None,
        golden: None,
    };
    assert!(!expected_problems(&s).is_empty());
    let (_dir, r) = load(manifest_text(&s).as_bytes());
    assert!(
        matches!(r, Err(RuntimeError::Manifest { .. })),
        "window 2^62 + 1 x 4 features taken for 4 inputs: {r:?}"
    );
}

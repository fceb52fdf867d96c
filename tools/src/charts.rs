//! `augur replay --charts DIR`: a reliability diagram and a rolling-accuracy chart per model
//! (and for the ensemble), as PNGs, drawn from the scored signals ([`Signals`]), so that
//! calibration and decay can be seen at a glance.
//!
//! - **Reliability** (`reliability-<model>.png`): per timeframe, the predictions grouped into
//!   10 fixed bins of their top-class confidence; each bin's mean confidence against its
//!   accuracy (the top class was the realized label), with the diagonal of perfect
//!   calibration. Its ECE is the one `/api/v1/quality` reports over the same outcomes.
//! - **Rolling accuracy** (`rolling-accuracy-<model>.png`): per timeframe, the accuracy of
//!   the last `window` outcomes in event-time order, with the manifest's test accuracy and
//!   the baseline (training majority class) as horizontal lines.
//!
//! The text is drawn with DejaVu Sans (tools/assets, Bitstream Vera licence), built into the
//! binary: nothing is looked up on the machine.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::signals::{Signal, Signals};

const BINS: usize = 10;
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// One confidence bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Bin {
    /// Its confidence range [lo, hi).
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean top-class confidence of its predictions.
    pub confidence: f64,
    /// Share whose top class was the realized label.
    pub accuracy: f64,
}

/// The manifest figures drawn beside a model's live accuracy.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    pub test_accuracy: Option<f64>,
    pub baseline_accuracy: Option<f64>,
}

/// A model's probabilities on a signal: `ensemble` or a member of [`Signals::members`].
fn probs(s: &Signals, r: &Signal, model: &str) -> Option<[f32; 3]> {
    let p = if model == "ensemble" {
        r.ensemble
    } else {
        *r.members.get(s.members.iter().position(|m| m == model)?)?
    };
    Some([p[0]?, p[1]?, p[2]?])
}

/// (top class == label, top-class confidence); the first maximum wins a tie, as the service
/// and numpy choose.
fn call(p: [f32; 3], label: i32) -> (bool, f64) {
    let (i, c) = augur_actors::types::argmax(&p);
    (i as i32 - 1 == label, f64::from(c))
}

/// Per timeframe, the reliability bins of `model` (bins without predictions left out).
pub fn reliability(s: &Signals, model: &str) -> BTreeMap<String, Vec<Bin>> {
    let mut acc: BTreeMap<String, [(f64, usize, usize); BINS]> = BTreeMap::new();
    for r in &s.rows {
        let Some(p) = probs(s, r, model) else { continue };
        let (hit, conf) = call(p, r.label);
        let b = ((conf * BINS as f64) as usize).min(BINS - 1);
        let e = &mut acc.entry(r.timeframe.clone()).or_insert([(0.0, 0, 0); BINS])[b];
        e.0 += conf;
        e.1 += usize::from(hit);
        e.2 += 1;
    }
    acc.into_iter()
        .map(|(tf, bins)| {
            let v = bins
                .iter()
                .enumerate()
                .filter(|(_, b)| b.2 > 0)
                .map(|(k, (c, h, n))| Bin {
                    lo: k as f64 / BINS as f64,
                    hi: (k + 1) as f64 / BINS as f64,
                    count: *n,
                    confidence: c / *n as f64,
                    accuracy: *h as f64 / *n as f64,
                })
                .collect();
            (tf, v)
        })
        .collect()
}

/// The expected calibration error of a set of bins.
pub fn ece(bins: &[Bin]) -> f64 {
    let n: usize = bins.iter().map(|b| b.count).sum();
    bins.iter()
        .map(|b| b.count as f64 / n.max(1) as f64 * (b.accuracy - b.confidence).abs())
        .sum()
}

/// Decimal year of a Unix time in ms.
fn year(ms: i64) -> f64 {
    1970.0 + ms as f64 / (365.2425 * 86_400_000.0)
}

/// Per timeframe, the accuracy of `model` over the last `window` outcomes, after each outcome
/// from the `window`-th on, in event-time order: (decimal year of the event, or the outcome's
/// index when the signals have no event time; accuracy).
pub fn rolling_accuracy(s: &Signals, model: &str, window: usize) -> BTreeMap<String, Vec<(f64, f64)>> {
    rolling(s, model, window).0
}

/// [`rolling_accuracy`], and whether its x is time (every signal had an event time).
fn rolling(s: &Signals, model: &str, window: usize) -> (BTreeMap<String, Vec<(f64, f64)>>, bool) {
    let window = window.max(1);
    // Per timeframe: (event time, the signal, its top class was right).
    type Calls<'a> = Vec<(Option<i64>, &'a Signal, bool)>;
    let mut by: BTreeMap<String, Calls<'_>> = BTreeMap::new();
    for r in &s.rows {
        if let Some(p) = probs(s, r, model) {
            by.entry(r.timeframe.clone())
                .or_default()
                .push((r.event_time_ms, r, call(p, r.label).0));
        }
    }
    let timed = by.values().flatten().all(|x| x.0.is_some_and(|t| t > 0));
    let series = by
        .into_iter()
        .map(|(tf, mut v)| {
            v.sort_by(|a, b| (a.0, &a.1.symbol, a.1.sequence).cmp(&(b.0, &b.1.symbol, b.1.sequence)));
            let mut hits = 0usize;
            let mut out = Vec::new();
            for (i, (t, _, hit)) in v.iter().enumerate() {
                hits += usize::from(*hit);
                if i >= window {
                    hits -= usize::from(v[i - window].2);
                }
                if i + 1 >= window {
                    let x = match t {
                        Some(t) if timed => year(*t),
                        _ => i as f64,
                    };
                    out.push((x, hits as f64 / window as f64));
                }
            }
            (tf, out)
        })
        .collect();
    (series, timed)
}

fn font() -> anyhow::Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok =
        *DONE.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    anyhow::ensure!(ok, "the built-in font did not load");
    Ok(())
}

fn e<T: std::fmt::Display>(x: T) -> anyhow::Error {
    anyhow::anyhow!("drawing: {x}")
}

/// Draws both charts of every model that has outcomes (the ensemble first) into `dir`, with
/// their numbers in `reliability.csv` and `rolling-accuracy.csv`; returns the files written. `references` holds the manifest figures by model id.
pub fn draw(
    dir: &Path,
    s: &Signals,
    references: &BTreeMap<String, Reference>,
    window: usize,
) -> anyhow::Result<Vec<PathBuf>> {
    font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    let models = std::iter::once("ensemble".to_string()).chain(s.members.iter().cloned());
    // The numbers behind the charts, for whoever wants to redraw or check them.
    let mut used = std::collections::HashSet::new();
    let mut rel_csv = String::from("model,timeframe,bin_lo,bin_hi,count,confidence,accuracy\n");
    let mut roll_csv = String::from("model,timeframe,x,accuracy\n");
    for m in models {
        let rel = reliability(s, &m);
        if rel.is_empty() {
            continue;
        }
        let (roll, timed) = rolling(s, &m, window);
        for (tf, bins) in &rel {
            for b in bins {
                rel_csv.push_str(&format!(
                    "{},{},{},{},{},{},{}\n",
                    crate::signals::quote(&m),
                    crate::signals::quote(tf),
                    b.lo,
                    b.hi,
                    b.count,
                    b.confidence,
                    b.accuracy
                ));
            }
        }
        for (tf, pts) in &roll {
            for (x, a) in pts {
                roll_csv.push_str(&format!(
                    "{},{},{x},{a}\n",
                    crate::signals::quote(&m),
                    crate::signals::quote(tf)
                ));
            }
        }
        let mut safe: String = m
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        // Two ids that sanitize alike ("a.b", "a_b") keep a file each.
        let base = safe.clone();
        let mut k = 2;
        while !used.insert(safe.clone()) {
            safe = format!("{base}-{k}");
            k += 1;
        }
        let p = dir.join(format!("reliability-{safe}.png"));
        draw_reliability(&p, &m, &rel)?;
        out.push(p);
        // Fewer outcomes than the window: no point to draw (an empty range hangs plotters).
        if roll.values().any(|v| !v.is_empty()) {
            let p = dir.join(format!("rolling-accuracy-{safe}.png"));
            draw_rolling(&p, &m, &roll, window, timed, references.get(&m))?;
            out.push(p);
        }
    }
    for (name, text) in [("reliability.csv", rel_csv), ("rolling-accuracy.csv", roll_csv)] {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        out.push(p);
    }
    Ok(out)
}

fn draw_reliability(path: &Path, model: &str, rel: &BTreeMap<String, Vec<Bin>>) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (720, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{model}: reliability"), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("top-class confidence (bin mean)")
        .y_desc("accuracy")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.35)))
        .map_err(e)?
        .label("perfect calibration")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.35)));
    for (i, (tf, bins)) in rel.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let n: usize = bins.iter().map(|b| b.count).sum();
        let pts: Vec<(f64, f64)> = bins.iter().map(|b| (b.confidence, b.accuracy)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(e)?
            .label(format!("{tf}: {n} outcomes, ECE {:.3}", ece(bins)))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        // Marker area grows with the bin's share of the outcomes.
        chart
            .draw_series(bins.iter().map(|b| {
                let r = 3.0 + 9.0 * (b.count as f64 / n.max(1) as f64).sqrt();
                Circle::new((b.confidence, b.accuracy), r as i32, c.filled())
            }))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

fn draw_rolling(
    path: &Path,
    model: &str,
    series: &BTreeMap<String, Vec<(f64, f64)>>,
    window: usize,
    timed: bool,
    reference: Option<&Reference>,
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (960, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let xs = series.values().flatten().map(|p| p.0);
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    anyhow::ensure!(x0.is_finite() && x1.is_finite(), "no point to draw");
    let (x0, x1) = if x0 < x1 { (x0, x1) } else { (x0 - 1.0, x0 + 1.0) };
    let refs = reference
        .map(|r| [r.test_accuracy, r.baseline_accuracy])
        .unwrap_or_default();
    let ys = series
        .values()
        .flatten()
        .map(|p| p.1)
        .chain(refs.iter().flatten().copied());
    let (y0, y1) = ys.fold((1.0f64, 0.0f64), |(a, b), y| (a.min(y), b.max(y)));
    let (y0, y1) = if y0 <= y1 {
        ((y0 - 0.05).max(0.0), (y1 + 0.05).min(1.0))
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{model}: accuracy over the last {window} outcomes"),
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(if timed { "event time (year)" } else { "outcome" })
        .y_desc("accuracy")
        .x_label_formatter(&|x| {
            if timed && x1 - x0 < 4.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.0}")
            }
        })
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    for (i, (tf, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(e)?
            .label(tf.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    for (k, (v, name)) in refs
        .iter()
        .zip(["manifest test accuracy", "baseline (majority class)"])
        .enumerate()
    {
        if let Some(v) = v {
            let c = if k == 0 { BLACK } else { RGBColor(128, 128, 128) };
            chart
                .draw_series(DashedLineSeries::new(
                    [(x0, *v), (x1, *v)],
                    8,
                    5,
                    c.stroke_width(2),
                ))
                .map_err(e)?
                .label(format!("{name} {v:.3}"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(tf: &str, t: i64, p: [f32; 3], label: i32) -> Signal {
        Signal {
            symbol: "A".into(),
            timeframe: tf.into(),
            sequence: t as u64,
            event_time_ms: Some(t),
            event_id: format!("e{t}"),
            method: Some("mean".into()),
            signal: Some(0),
            confidence: Some(0.5),
            ensemble: p.map(Some),
            members: vec![[Some(p[2]), Some(p[1]), Some(p[0])]],
            horizon_bars: 5,
            label,
            realized_return: 0.0,
        }
    }

    #[test]
    fn reliability_bins_and_rolling_accuracy_count_what_they_say() {
        let s = Signals {
            members: vec!["m".into()],
            rows: vec![
                signal("1d", 1, [0.75, 0.125, 0.125], -1),
                signal("1d", 2, [0.78125, 0.125, 0.09375], -1),
                signal("1d", 3, [0.2, 0.35, 0.45], 1),
                signal("1d", 4, [0.42, 0.42, 0.16], 0),
            ],
        };
        let r = reliability(&s, "ensemble");
        let b = &r["1d"];
        assert_eq!(b.len(), 2);
        // [0.4, 0.5): 0.45 (hit), 0.42 (tie: the first maximum, short; missed).
        assert_eq!((b[0].lo, b[0].count, b[0].accuracy), (0.4, 2, 0.5));
        assert!((b[0].confidence - 0.435).abs() < 1e-6);
        // [0.7, 0.8): 0.75 and 0.78125, both hits.
        assert_eq!((b[1].count, b[1].accuracy, b[1].confidence), (2, 1.0, 0.765625));
        assert!(
            (ece(b) - (0.5 * 0.065 + 0.5 * 0.234375)).abs() < 1e-6,
            "{}",
            ece(b)
        );
        // The member holds the classes reversed: long, long, short, neutral (the tie's first
        // maximum): missed three times, then a hit.
        let m = rolling_accuracy(&s, "m", 2);
        let accs: Vec<f64> = m["1d"].iter().map(|p| p.1).collect();
        assert_eq!(accs, vec![0.0, 0.0, 0.5]);
        assert!(rolling_accuracy(&s, "missing", 2).is_empty());
    }

    #[test]
    fn the_charts_are_pngs_with_something_drawn() {
        let rows = (1..=40)
            .map(|i| {
                signal(
                    if i % 2 == 0 { "1d" } else { "1h" },
                    1_500_000_000_000 + i * 86_400_000,
                    [0.2, 0.3, 0.5],
                    (i % 3) as i32 - 1,
                )
            })
            .collect();
        let s = Signals {
            members: vec!["m".into()],
            rows,
        };
        let dir = tempfile::tempdir().unwrap();
        let refs = BTreeMap::from([(
            "m".to_string(),
            Reference {
                test_accuracy: Some(0.4),
                baseline_accuracy: Some(0.35),
            },
        )]);
        let files = draw(dir.path(), &s, &refs, 5).unwrap();
        assert_eq!(files.len(), 6, "{files:?}");
        // Fewer outcomes than the window: the reliability diagrams only (this hung once).
        let few = draw(&dir.path().join("few"), &s, &refs, 1000).unwrap();
        assert_eq!(few.len(), 4, "{few:?}");
        for f in files.iter().filter(|f| f.extension().is_some_and(|x| x == "png")) {
            let bytes = std::fs::read(f).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", f.display());
            assert!(bytes.len() > 5_000, "{}: {} bytes", f.display(), bytes.len());
        }
    }

    #[test]
    fn models_whose_names_sanitize_alike_get_files_of_their_own() {
        let mut rows: Vec<Signal> = (1..=20)
            .map(|i| signal("1d", 1_500_000_000_000 + i * 86_400_000, [0.2, 0.3, 0.5], 1))
            .collect();
        for r in &mut rows {
            r.members.push(r.members[0]);
        }
        let s = Signals {
            members: vec!["a.b".into(), "a_b".into()],
            rows,
        };
        let dir = tempfile::tempdir().unwrap();
        let files = draw(dir.path(), &s, &BTreeMap::new(), 5).unwrap();
        let mut pngs: Vec<_> = files
            .iter()
            .filter(|f| f.extension().is_some_and(|x| x == "png"))
            .collect();
        let n = pngs.len();
        pngs.sort();
        pngs.dedup();
        assert_eq!((n, pngs.len()), (6, 6), "{files:?}");
    }
}

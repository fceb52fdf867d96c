//! Multi-horizon forecasts: a model with a forecast head answers, after its class
//! probabilities, a Gaussian over the log return ln(close[t+h] / close[t]) per horizon h, as
//! (mu, log_scale). Here they become what a desk reads: the expected return, a central
//! interval, a confidence, and (when the input carries its bar's close) the prices.
use std::sync::Arc;

use serde::Serialize;

/// A model's forecast head, from its manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForecastSpec {
    /// Bars ahead, increasing.
    pub horizons: Arc<[u32]>,
    /// The interval's central probability (0.8).
    pub interval: f32,
    /// The standard normal quantile of (1 + interval) / 2: the interval is mu +- z * sigma.
    #[serde(skip)]
    pub z: f32,
}

impl ForecastSpec {
    pub fn new(horizons: &[u32], interval: f64) -> Self {
        ForecastSpec {
            horizons: horizons.into(),
            interval: interval as f32,
            z: normal_quantile((1.0 + interval) / 2.0) as f32,
        }
    }

    /// Values the head adds to an output row.
    pub fn width(&self) -> usize {
        2 * self.horizons.len()
    }

    /// The forecasts of one output row's head values ((mu, log_scale) per horizon); `None`
    /// when they are not finite or the scale is outside what a log return can have.
    pub fn read(&self, head: &[f32]) -> Option<Vec<HorizonForecast>> {
        if head.len() != self.width() {
            return None;
        }
        self.horizons
            .iter()
            .zip(head.chunks_exact(2))
            .map(|(&h, v)| {
                let (mu, log_scale) = (v[0], v[1]);
                let sigma = log_scale.exp();
                if !(mu.is_finite() && log_scale.is_finite() && sigma > 0.0 && sigma.is_finite()) {
                    return None;
                }
                let half = self.z * sigma;
                Some(HorizonForecast {
                    horizon_bars: h,
                    expected_return: mu,
                    sigma,
                    lower_return: mu - half,
                    upper_return: mu + half,
                    interval: self.interval,
                    confidence: normal_cdf((mu.abs() / sigma) as f64) as f32,
                    price: None,
                    lower_price: None,
                    upper_price: None,
                })
            })
            .collect()
    }
}

/// One horizon's forecast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HorizonForecast {
    pub horizon_bars: u32,
    /// mu: the expected log return over the horizon.
    pub expected_return: f32,
    /// The Gaussian scale of the log return.
    pub sigma: f32,
    /// The central `interval` of the log return: mu -+ z * sigma.
    pub lower_return: f32,
    pub upper_return: f32,
    pub interval: f32,
    /// The probability that the return has the sign of mu: Phi(|mu| / sigma), 0.5 to 1.
    pub confidence: f32,
    /// close * exp(mu) and the interval in prices, when the input carried its bar's close.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_price: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper_price: Option<f64>,
}

impl HorizonForecast {
    /// Fills the prices from the close of the bar the forecast starts from.
    pub fn price_from(&mut self, close: f64) {
        if close.is_finite() && close > 0.0 {
            let at = |r: f32| Some(close * f64::from(r).exp()).filter(|p| p.is_finite());
            self.price = at(self.expected_return);
            self.lower_price = at(self.lower_return);
            self.upper_price = at(self.upper_return);
        }
    }
}

/// The standard normal distribution function (Abramowitz and Stegun 7.1.26 for erf, absolute
/// error below 1.5e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// The standard normal quantile of p in (0, 1), by bisection on [`normal_cdf`] (called once
/// per model load).
pub fn normal_quantile(p: f64) -> f64 {
    if !(p > 0.0 && p < 1.0) {
        return f64::NAN;
    }
    let (mut lo, mut hi) = (-10.0f64, 10.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// One member's forecasts of one prediction, as the outcomes thread keeps them.
#[derive(Debug, Clone)]
pub struct Issued {
    pub model: Arc<str>,
    pub version: Arc<str>,
    /// (horizon, mu, half the interval's width) per horizon.
    pub horizons: Vec<(u32, f32, f32)>,
}

impl Issued {
    /// The forecasts of a member's prediction, if it has any.
    pub fn of(m: &crate::types::MemberPrediction) -> Option<Issued> {
        (!m.forecasts.is_empty() && !m.fallback).then(|| Issued {
            model: m.model_id.clone(),
            version: m.model_version.clone(),
            horizons: m
                .forecasts
                .iter()
                .map(|f| {
                    (
                        f.horizon_bars,
                        f.expected_return,
                        0.5 * (f.upper_return - f.lower_return),
                    )
                })
                .collect(),
        })
    }
}

/// One forecast scored: the realized log return against mu and against a zero forecast, and
/// whether it fell inside the interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub abs_error: f64,
    pub abs_zero: f64,
    pub covered: bool,
}

/// Forecasts waiting per stream at most (one per bar, the longest horizon's worth and more).
pub const MAX_PENDING_FORECASTS: usize = 512;
/// Bars a prediction may reach the outcomes thread after later bars and still have its
/// forecasts scored, in serve (outcomes.max_lag_bars when smaller; a replay keeps them all).
pub const MAX_LATE_BARS: u64 = 64;

/// One stream's closes and the forecasts waiting for them: a forecast made at bar t for h
/// bars is scored when close[t + h] arrives, with ln(close[t + h] / close[t]).
#[derive(Debug, Default)]
pub struct ForecastBook {
    closes: std::collections::BTreeMap<u64, f64>,
    /// By the sequence of the bar the forecast starts from.
    pending: std::collections::BTreeMap<u64, Vec<Issued>>,
    newest: u64,
    /// The longest horizon seen: how many closes to keep.
    longest: u64,
    /// Every horizon seen, ascending: a bar ends the forecasts made exactly that many bars
    /// before it, and only those are looked up (not every bar of the longest horizon).
    horizons: Vec<u32>,
}

/// (model, version, horizon, score) of one resolved forecast.
pub type Resolved = (Arc<str>, Arc<str>, u32, Scored);

impl ForecastBook {
    /// A stream's book, keeping the closes of horizons up to `longest` bars (the longest of the
    /// served models' forecast heads; 0: none forecasts, and no close is kept until one does).
    pub fn new(longest: u64) -> Self {
        ForecastBook {
            longest,
            ..Default::default()
        }
    }

    fn score(&self, t: u64, issued: &Issued, only: Option<u64>, out: &mut Vec<Resolved>) {
        let Some(&c0) = self.closes.get(&t) else { return };
        for &(h, mu, half) in &issued.horizons {
            if only.is_some_and(|s| s != t + u64::from(h)) {
                continue;
            }
            if let Some(&c1) = self.closes.get(&(t + u64::from(h))) {
                let r = (c1 / c0).ln();
                if r.is_finite() {
                    let e = (r - f64::from(mu)).abs();
                    out.push((
                        issued.model.clone(),
                        issued.version.clone(),
                        h,
                        Scored {
                            abs_error: e,
                            abs_zero: r.abs(),
                            covered: e <= f64::from(half),
                        },
                    ));
                }
            }
        }
    }

    /// A bar's close: scores every waiting forecast whose horizon ends on it.
    pub fn bar(&mut self, max_lag: u64, sequence: u64, close: f64) -> Vec<Resolved> {
        let mut out = Vec::new();
        // Nothing kept while no model forecasts (see [`ForecastBook::new`]).
        if self.longest == 0 || !(close.is_finite() && close > 0.0) {
            return out;
        }
        let keep = self.longest + max_lag + 1;
        // Numbering restarted: start again (as the label book does).
        if sequence.saturating_add(keep) < self.newest {
            *self = ForecastBook {
                longest: self.longest,
                horizons: std::mem::take(&mut self.horizons),
                ..Default::default()
            };
        }
        // A bar seen before (re-read to refill windows) scores nothing twice.
        if self.closes.insert(sequence, close).is_some() {
            return out;
        }
        self.newest = self.newest.max(sequence);
        // The forecasts this bar ends: made `h` bars before it, for each horizon `h` (oldest
        // first). One lookup per horizon: at 5,000 bars/s the range scan over the longest
        // horizon's bars (60) took 7 % of the service's CPU.
        for &h in self.horizons.iter().rev() {
            let Some(t) = sequence.checked_sub(u64::from(h)) else {
                continue;
            };
            if let Some(issued) = self.pending.get(&t) {
                for i in issued {
                    self.score(t, i, Some(sequence), &mut out);
                }
            }
        }
        let oldest = self.newest.saturating_sub(keep);
        while self.closes.first_key_value().is_some_and(|(&s, _)| s < oldest) {
            self.closes.pop_first();
        }
        // Done: every horizon's bar has come (at most `longest` bars after its own).
        while self
            .pending
            .first_key_value()
            .is_some_and(|(&s, _)| s.saturating_add(self.longest) <= self.newest)
        {
            self.pending.pop_first();
        }
        out
    }

    /// A prediction's forecasts, made at bar `sequence`: scored at once for horizons whose
    /// bar is already here (a late prediction), kept for the rest.
    pub fn predicted(&mut self, sequence: u64, issued: Vec<Issued>) -> Vec<Resolved> {
        let mut out = Vec::new();
        if issued.is_empty() {
            return out;
        }
        // A book that kept no closes (no served model had a forecast head when the stream
        // began) starts now: this forecast's own close is gone, the next ones are kept.
        let first = self.longest == 0;
        for i in &issued {
            self.longest = self
                .longest
                .max(i.horizons.iter().map(|h| u64::from(h.0)).max().unwrap_or(0));
            for &(h, _, _) in &i.horizons {
                if h > 0
                    && let Err(at) = self.horizons.binary_search(&h)
                {
                    self.horizons.insert(at, h);
                }
            }
            self.score(sequence, i, None, &mut out);
        }
        if first {
            // Only from now on are closes kept: this forecast's own close was not.
            return out;
        }
        let ends = sequence + self.longest;
        if ends > self.newest {
            if self.pending.len() >= MAX_PENDING_FORECASTS.max(self.longest as usize + 64) {
                self.pending.pop_first();
            }
            // One prediction per bar: a second one for the same bar replaces the first.
            self.pending.insert(sequence, issued);
        }
        out
    }

    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Closes kept (for the memory test).
    pub fn kept(&self) -> usize {
        self.closes.len()
    }
}

/// Running forecast scores of one (model, version, timeframe, horizon): a sliding window and
/// everything since start.
#[derive(Debug, Clone, Default)]
pub struct ForecastScores {
    window: std::collections::VecDeque<Scored>,
    sums: [f64; 3],
    total: [f64; 3],
    total_n: u64,
}

/// Forecast figures over some outcomes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ForecastFigures {
    pub count: u64,
    /// Mean absolute error of mu against the realized log return.
    pub mae: f64,
    /// The same of a forecast of zero return (the naive baseline).
    pub mae_zero: f64,
    /// 1 - mae / mae_zero: above 0 beats the naive forecast.
    pub skill: Option<f64>,
    /// Share of realized returns inside the interval (0.8 when calibrated).
    pub coverage: f64,
}

impl ForecastScores {
    pub fn add(&mut self, s: Scored, window: usize) {
        let v = [s.abs_error, s.abs_zero, if s.covered { 1.0 } else { 0.0 }];
        for ((sum, total), x) in self.sums.iter_mut().zip(self.total.iter_mut()).zip(v) {
            *sum += x;
            *total += x;
        }
        self.total_n += 1;
        self.window.push_back(s);
        while self.window.len() > window.max(1) {
            if let Some(old) = self.window.pop_front() {
                let o = [old.abs_error, old.abs_zero, if old.covered { 1.0 } else { 0.0 }];
                for (sum, x) in self.sums.iter_mut().zip(o) {
                    *sum -= x;
                }
            }
        }
    }

    fn figures(sums: &[f64; 3], n: u64) -> ForecastFigures {
        let d = n.max(1) as f64;
        let (mae, mae_zero) = (sums[0] / d, sums[1] / d);
        ForecastFigures {
            count: n,
            mae,
            mae_zero,
            skill: (mae_zero > 0.0).then(|| 1.0 - mae / mae_zero),
            coverage: sums[2] / d,
        }
    }

    pub fn window_figures(&self) -> ForecastFigures {
        // Recomputed from the window: running sums drift after many subtractions.
        let mut s = [0.0; 3];
        for o in &self.window {
            s[0] += o.abs_error;
            s[1] += o.abs_zero;
            s[2] += if o.covered { 1.0 } else { 0.0 };
        }
        Self::figures(&s, self.window.len() as u64)
    }

    pub fn total_figures(&self) -> ForecastFigures {
        Self::figures(&self.total, self.total_n)
    }
}

/// The forecast quality of one (model, version, timeframe, horizon).
#[derive(Debug, Clone, Serialize)]
pub struct ForecastRow {
    pub model: String,
    pub version: String,
    pub timeframe: String,
    pub horizon_bars: u32,
    pub window: ForecastFigures,
    pub total: ForecastFigures,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_the_normal_functions_match_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_963_985) - 0.975).abs() < 2e-7);
        assert!((normal_cdf(-1.0) - 0.158_655_254).abs() < 2e-7);
        assert!((normal_quantile(0.9) - 1.281_551_566).abs() < 1e-5);
        assert!(normal_quantile(1.0).is_nan());
    }

    #[test]
    fn test_a_head_row_reads_as_intervals_confidences_and_prices() {
        let spec = ForecastSpec::new(&[1, 5], 0.8);
        let mut f = spec.read(&[0.01, (0.02f32).ln(), -0.03, (0.05f32).ln()]).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].horizon_bars, 5);
        assert!((f[0].sigma - 0.02).abs() < 1e-6);
        assert!((f[0].upper_return - (0.01 + 1.281_551_6 * 0.02)).abs() < 1e-5);
        // P(r > 0) for mu = 0.01, sigma = 0.02: Phi(0.5) = 0.6915.
        assert!((f[0].confidence - 0.691_462).abs() < 1e-4);
        assert!((f[1].confidence - 0.725_747).abs() < 1e-4);
        f[0].price_from(100.0);
        let p = f[0].price.unwrap();
        assert!((p - 100.0 * 0.01f64.exp()).abs() < 1e-4);
        assert!(f[0].lower_price.unwrap() < p && p < f[0].upper_price.unwrap());
        // Not finite, or no scale: no forecast.
        assert!(spec.read(&[f32::NAN, 0.0, 0.0, 0.0]).is_none());
        assert!(spec.read(&[0.0, 200.0, 0.0, 0.0]).is_none());
        assert!(spec.read(&[0.0, 0.0]).is_none());
    }

    fn issued(h: &[u32], mu: f32, half: f32) -> Issued {
        Issued {
            model: "m".into(),
            version: "1".into(),
            horizons: h.iter().map(|&h| (h, mu, half)).collect(),
        }
    }

    #[test]
    fn test_a_forecast_is_scored_when_its_horizons_bar_arrives_in_either_order() {
        let mut b = ForecastBook::new(3);
        for s in 0..10 {
            assert!(b.bar(16, s, 100.0).is_empty());
        }
        // Made at bar 9 for 1 and 3 bars: mu 0.01, interval +-0.02.
        assert!(b.predicted(9, vec![issued(&[1, 3], 0.01, 0.02)]).is_empty());
        let r = b.bar(16, 10, 100.0 * 0.05f64.exp());
        assert_eq!(r.len(), 1);
        let (_, _, h, s) = &r[0];
        assert_eq!(*h, 1);
        assert!((s.abs_error - 0.04).abs() < 1e-9 && (s.abs_zero - 0.05).abs() < 1e-9);
        assert!(!s.covered);
        assert!(b.bar(16, 11, 100.0).is_empty());
        // The same bar again (a refill) scores nothing twice.
        assert!(b.bar(16, 10, 100.0 * 0.05f64.exp()).is_empty());
        let r = b.bar(16, 12, 100.0 * 0.015f64.exp());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].2, 3);
        assert!(r[0].3.covered && (r[0].3.abs_error - 0.005).abs() < 1e-9);
        // A late prediction (its bars are all here): scored at once, nothing kept for it.
        let r = b.predicted(9, vec![issued(&[1, 3], 0.0, 0.1)]);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|x| x.3.covered));
        // Made before the stream's first kept close: nothing to score, nothing invented.
        let mut fresh = ForecastBook::new(1);
        assert!(fresh.predicted(5, vec![issued(&[1], 0.0, 0.1)]).is_empty());
        assert!(fresh.bar(16, 6, 100.0).is_empty());
        // No model forecasts: no close is kept at all; the first forecast starts the book.
        let mut idle = ForecastBook::new(0);
        for s in 0..100 {
            assert!(idle.bar(16, s, 100.0).is_empty());
        }
        assert!(idle.closes.is_empty());
        assert!(idle.predicted(99, vec![issued(&[1], 0.0, 0.1)]).is_empty());
        assert!(
            idle.pending.is_empty(),
            "its own close is gone: nothing to wait for"
        );
        assert!(idle.predicted(100, vec![issued(&[1], 0.0, 0.1)]).is_empty());
        assert!(idle.bar(16, 100, 100.0).is_empty());
        assert_eq!(idle.bar(16, 101, 100.0).len(), 1);
    }

    #[test]
    fn test_a_streams_book_stays_bounded_a_forecast_leaving_once_its_last_horizon_is_scored() {
        let mut b = ForecastBook::new(60);
        let mut scored = 0;
        for s in 0..2_000u64 {
            scored += b.bar(64, s, 100.0 + (s % 7) as f64).len();
            scored += b.predicted(s, vec![issued(&[1, 5, 15, 60], 0.0, 0.1)]).len();
            // The forecasts of the last 60 bars wait; the closes of newest - (60 + 64 + 1) ..= newest.
            assert!(b.waiting() <= 60, "{} waiting at {s}", b.waiting());
            assert!(b.kept() <= 126, "{} closes at {s}", b.kept());
        }
        // Every horizon of every forecast whose bar came, once.
        let want: usize = [1u64, 5, 15, 60].iter().map(|h| (2_000 - h) as usize).sum();
        assert_eq!(scored, want);
    }

    #[test]
    fn test_forecast_scores_give_mae_skill_and_coverage() {
        let mut s = ForecastScores::default();
        s.add(
            Scored {
                abs_error: 0.01,
                abs_zero: 0.02,
                covered: true,
            },
            2,
        );
        s.add(
            Scored {
                abs_error: 0.03,
                abs_zero: 0.02,
                covered: false,
            },
            2,
        );
        s.add(
            Scored {
                abs_error: 0.02,
                abs_zero: 0.04,
                covered: true,
            },
            2,
        );
        let w = s.window_figures();
        assert_eq!(w.count, 2);
        assert!((w.mae - 0.025).abs() < 1e-12 && (w.mae_zero - 0.03).abs() < 1e-12);
        assert!((w.skill.unwrap() - (1.0 - 0.025 / 0.03)).abs() < 1e-12);
        assert!((w.coverage - 0.5).abs() < 1e-12);
        let t = s.total_figures();
        assert_eq!(t.count, 3);
        assert!((t.coverage - 2.0 / 3.0).abs() < 1e-12);
    }
}

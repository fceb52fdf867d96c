//! ta-v1 features in Rust, exactly as `models/feature_sets/ta-v1.toml` specifies them and as
//! `models/train/features.py` computes them: a streaming state per series, float64
//! throughout, float32 at the end. A test pins the two to each other on the committed data.
use std::collections::VecDeque;

pub const WARMUP_BARS: usize = 50;
pub const COUNT: usize = 20;

fn safe(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// Mean and population standard deviation, two passes, in order (as the Python does).
fn mean_std<'a>(xs: impl Iterator<Item = &'a f64> + Clone) -> (f64, f64) {
    let (mut sum, mut n) = (0.0, 0usize);
    for x in xs.clone() {
        sum += x;
        n += 1;
    }
    let m = sum / n as f64;
    let mut var = 0.0;
    for x in xs {
        var += (x - m) * (x - m);
    }
    (m, (var / n as f64).sqrt())
}

#[derive(Debug, Clone, Default)]
struct Ema {
    a: f64,
    v: Option<f64>,
}

impl Ema {
    fn new(n: f64) -> Self {
        Ema {
            a: 2.0 / (n + 1.0),
            v: None,
        }
    }

    fn update(&mut self, x: f64) -> f64 {
        let v = match self.v {
            None => x,
            Some(v) => v + self.a * (x - v),
        };
        self.v = Some(v);
        v
    }
}

#[derive(Debug, Clone, Default)]
struct Wilder {
    n: f64,
    v: Option<f64>,
}

impl Wilder {
    fn new(n: f64) -> Self {
        Wilder { n, v: None }
    }

    fn update(&mut self, x: f64) -> f64 {
        let v = match self.v {
            None => x,
            Some(v) => v + (x - v) / self.n,
        };
        self.v = Some(v);
        v
    }
}

/// One series' state: feed bars in order; `update` gives the 20 features once warm.
#[derive(Debug, Clone)]
pub struct TaV1 {
    closes: VecDeque<f64>,
    volumes: VecDeque<f64>,
    rets: VecDeque<f64>,
    ema12: Ema,
    ema26: Ema,
    ema9: Ema,
    gain: Wilder,
    loss: Wilder,
    atr: Wilder,
    seen: usize,
}

impl Default for TaV1 {
    fn default() -> Self {
        TaV1 {
            closes: VecDeque::with_capacity(21),
            volumes: VecDeque::with_capacity(20),
            rets: VecDeque::with_capacity(20),
            ema12: Ema::new(12.0),
            ema26: Ema::new(26.0),
            ema9: Ema::new(9.0),
            gain: Wilder::new(14.0),
            loss: Wilder::new(14.0),
            atr: Wilder::new(14.0),
            seen: 0,
        }
    }
}

fn push(q: &mut VecDeque<f64>, cap: usize, x: f64) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(x);
}

impl TaV1 {
    pub fn update(&mut self, o: f64, h: f64, l: f64, c: f64, v: f64) -> Option<[f32; COUNT]> {
        let prev = self.closes.back().copied();
        push(&mut self.closes, 21, c);
        push(&mut self.volumes, 20, v);
        let tr = match prev {
            Some(p) => {
                push(&mut self.rets, 20, (c / p).ln());
                self.gain.update((c - p).max(0.0));
                self.loss.update((p - c).max(0.0));
                (h - l).max((h - p).abs()).max((l - p).abs())
            }
            None => h - l,
        };
        let atr = self.atr.update(tr);
        let (e12, e26) = (self.ema12.update(c), self.ema26.update(c));
        let m = e12 - e26;
        let s = self.ema9.update(m);
        self.seen += 1;
        if self.seen < WARMUP_BARS {
            return None;
        }
        let n = self.closes.len();
        let ret = |k: usize| (c / self.closes[n - 1 - k]).ln();
        let (g, d) = (self.gain.v.unwrap_or(0.0), self.loss.v.unwrap_or(0.0));
        let (sma20, std20) = mean_std(self.closes.range(n - 20..));
        let (vm, vs) = mean_std(self.volumes.iter());
        let (_, vol20) = mean_std(self.rets.iter());
        let rng = h - l;
        let f = [
            ret(1),
            ret(2),
            ret(5),
            ret(10),
            ret(20),
            if g + d != 0.0 { safe(g, g + d) - 0.5 } else { 0.0 },
            m / c,
            s / c,
            (m - s) / c,
            atr / c,
            safe(c - (sma20 - 2.0 * std20), 4.0 * std20) - 0.5,
            c / sma20 - 1.0,
            c / e12 - 1.0,
            c / e26 - 1.0,
            safe(v - vm, vs),
            rng / c,
            safe(c - o, rng),
            safe(h - o.max(c), rng),
            safe(o.min(c) - l, rng),
            vol20,
        ];
        Some(f.map(|x| x as f32))
    }
}

"""ta-v1 in Python against independent pandas formulations of the same spec, on real data."""
import gzip
import io
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import features  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "data"


def aapl() -> pd.DataFrame:
    with gzip.open(DATA / "stocks.csv.gz", "rb") as f:
        df = pd.read_csv(io.BytesIO(f.read()))
    return df[df.Ticker == "AAPL"].sort_values("Date").reset_index(drop=True)


def test_names_match_the_spec_file():
    import tomllib

    spec = tomllib.loads((DATA.parent / "feature_sets" / "ta-v1.toml").read_text())
    assert [f["name"] for f in spec["features"]] == features.NAMES
    assert spec["count"] == len(features.NAMES)
    assert spec["warmup_bars"] == features.WARMUP_BARS


def test_features_equal_pandas_formulations_on_real_data():
    df = aapl()
    ohlcv = df[["Open", "High", "Low", "Close", "Volume"]].to_numpy(np.float64)
    got = features.compute(ohlcv)
    c, v = df.Close, df.Volume
    logc = np.log(c)
    ema = lambda s, n: s.ewm(alpha=2 / (n + 1), adjust=False).mean()  # noqa: E731
    m = ema(c, 12) - ema(c, 26)
    s = ema(m, 9)
    sma, sd = c.rolling(20).mean(), c.rolling(20).std(ddof=0)
    ret1 = logc.diff()
    want = {
        "ret_1": ret1,
        "ret_5": logc - logc.shift(5),
        "ret_20": logc - logc.shift(20),
        "macd_line": m / c,
        "macd_signal": s / c,
        "macd_hist": (m - s) / c,
        "bb_pctb": (c - (sma - 2 * sd)) / (4 * sd) - 0.5,
        "dist_sma20": c / sma - 1,
        "dist_ema26": c / ema(c, 26) - 1,
        "volume_z20": (v - v.rolling(20).mean()) / v.rolling(20).std(ddof=0),
        "range_ratio": (df.High - df.Low) / c,
        "volatility_20": ret1.rolling(20).std(ddof=0),
    }
    rows = slice(features.WARMUP_BARS - 1, None)
    for name, series in want.items():
        col = got[rows, features.NAMES.index(name)]
        np.testing.assert_allclose(col, series.to_numpy()[rows], rtol=1e-7, atol=1e-9, err_msg=name)


def test_no_features_before_warmup_and_all_finite_after():
    df = aapl()
    got = features.compute(df[["Open", "High", "Low", "Close", "Volume"]].to_numpy(np.float64))
    assert np.isnan(got[: features.WARMUP_BARS - 1]).all()
    assert np.isfinite(got[features.WARMUP_BARS - 1 :]).all()


def test_flat_market_gives_neutral_rsi_and_zero_body():
    st = features.TaV1()
    out = None
    for _ in range(features.WARMUP_BARS):
        out = st.update(10.0, 10.0, 10.0, 10.0, 100.0)
    assert out is not None
    f = dict(zip(features.NAMES, out))
    assert f["rsi_14"] == 0.0 and f["body_ratio"] == 0.0 and f["ret_1"] == 0.0
    assert not any(math.isnan(x) for x in out)

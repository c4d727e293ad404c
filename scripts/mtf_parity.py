#!/usr/bin/env python3
"""The shipped features' multi-timeframe and funding columns against pandas (issue 19).

    python3 scripts/mtf_parity.py runs/.../features.parquet data/lake

For each hourly feature row, pandas.merge_asof finds the last 4h and 1d bar whose close time is
before the row's close (allow_exact_matches=False: the bar closing with the row is not yet
known, DOMAIN.md section 8; tolerance one higher bar: a missing bar gives nothing rather than
an older one), and the last funding settled at or before the row's close (within a day). The
higher-timeframe figures are computed here with pandas: the bar's return and its close over
the mean of its last 20 closes. Prints the largest difference per column and `parity: ok`, or
exits 1 naming what differs. Needs pandas and pyarrow (.ci/run installs them into a venv).
"""
import glob
import os
import sys

import numpy as np
import pandas as pd

HOUR = 3_600_000


def read_table(lake, table):
    files = glob.glob(os.path.join(lake, table, "**", "*.parquet"), recursive=True)
    if not files:
        sys.exit(f"no {table} parts under {lake}")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def higher(klines, interval):
    bars = klines[klines["interval"] == interval].sort_values(["symbol", "open_time"]).copy()
    by_symbol = bars.groupby("symbol")["close"]
    bars["ret"] = by_symbol.transform(lambda c: c / c.shift(1) - 1.0)
    bars["sma_ratio_20"] = bars["close"] / by_symbol.transform(lambda c: c.rolling(20).mean())
    return bars[["symbol", "close_time", "ret", "sma_ratio_20"]]


def compare(name, got, expected):
    got, expected = got.to_numpy(dtype=float), expected.to_numpy(dtype=float)
    null_mismatch = np.isnan(got) != np.isnan(expected)
    if null_mismatch.any():
        return f"{name}: {int(null_mismatch.sum())} rows null in one and not the other"
    both = ~np.isnan(got)
    if not both.any():
        return f"{name}: no values to compare"
    worst = float(np.max(np.abs(got[both] - expected[both]) / np.maximum(np.abs(expected[both]), 1.0)))
    print(f"{name}: {int(both.sum())} values, largest relative difference {worst:.3g}")
    return None if worst <= 1e-12 else f"{name}: differs by {worst}"


def main():
    features_path, lake = sys.argv[1], sys.argv[2]
    features = pd.read_parquet(features_path)
    features["symbol"] = features["symbol"].astype(str)
    rows = features[["symbol", "open_time"]].copy()
    rows["close_time"] = rows["open_time"] + HOUR - 1
    rows = rows.sort_values("close_time")
    klines = read_table(lake, "klines")
    klines["symbol"] = klines["symbol"].astype(str)
    expected = rows
    for interval, length in [("4h", 4 * HOUR), ("1d", 24 * HOUR)]:
        bars = higher(klines, interval).sort_values("close_time")
        expected = pd.merge_asof(
            expected,
            bars.rename(columns={"ret": f"ret_{interval}", "sma_ratio_20": f"sma_ratio_20_{interval}"}),
            on="close_time",
            by="symbol",
            direction="backward",
            allow_exact_matches=False,
            tolerance=length,
        )
    funding = read_table(lake, "funding")[["symbol", "funding_time", "funding_rate"]]
    funding["symbol"] = funding["symbol"].astype(str)
    expected = pd.merge_asof(
        expected.sort_values("close_time"),
        funding.sort_values("funding_time"),
        left_on="close_time",
        right_on="funding_time",
        by="symbol",
        direction="backward",
        allow_exact_matches=True,
        tolerance=24 * HOUR - 1,
    )
    merged = features.merge(expected, on=["symbol", "open_time"], suffixes=("", "_pandas"))
    if len(merged) != len(features):
        sys.exit(f"{len(features)} feature rows, {len(merged)} matched")
    problems = [
        compare(column, merged[column], merged[f"{column}_pandas"])
        for column in ["ret_4h", "sma_ratio_20_4h", "ret_1d", "sma_ratio_20_1d", "funding_rate"]
    ]
    problems = [p for p in problems if p]
    if problems:
        sys.exit("parity: FAILED\n" + "\n".join(problems))
    print(f"parity: ok ({len(features)} rows)")


if __name__ == "__main__":
    main()

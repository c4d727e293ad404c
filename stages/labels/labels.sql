-- Labels, one row per symbol and bar (DOMAIN.md section 4). They use the future by design, so
-- they live in their own stage and never feed a feature.
-- A signal at the close of bar t trades at the open of bar t+1:
--   entry   = open[t+1]
--   fwd_ret = close[t+H] / entry - 1
--   dd      = min(low[t+1..t+H]) / entry - 1
-- BUY if fwd_ret > $up and dd > -$down; else SELL if fwd_ret < -$up or dd <= -$down; else HOLD.
-- Rows without H bars ahead, or with a missing bar among them (the horizon would stretch), get
-- no label. Params: $interval, $bar_ms (its length in ms), $horizon (H, bars), $up, $down.
-- label_end_time is the open time of bar t+H, the last bar the label reads: `train` purges
-- every training row whose label_end_time reaches its test block.

WITH
-- The validated candles of one interval.
bars AS (
  SELECT symbol, open_time, open, low, close
  FROM klines
  WHERE "interval" = $interval
),

-- What happens after bar t: the next open, the close H bars on, the lowest low in between.
ahead AS (
  SELECT symbol, open_time,
    forward_value(open, 1) OVER w AS entry,
    forward_value(close, $horizon) OVER w AS exit_close,
    forward_min(low, $horizon) OVER w AS lowest_low,
    -- The open time H rows ahead: exactly H bars later when none is missing.
    forward_value(open_time, $horizon) OVER w AS exit_open_time
  FROM bars
  WINDOW w AS (PARTITION BY symbol ORDER BY open_time)
),

outcomes AS (
  SELECT symbol, open_time,
    exit_close / entry - 1.0 AS fwd_ret,
    lowest_low / entry - 1.0 AS drawdown
  FROM ahead
  WHERE entry IS NOT NULL AND exit_close IS NOT NULL AND lowest_low IS NOT NULL
    AND exit_open_time = CAST(open_time + $horizon * $bar_ms AS DOUBLE)
)

SELECT symbol, open_time, fwd_ret, drawdown,
  CAST(open_time + $horizon * $bar_ms AS BIGINT) AS label_end_time,
  CASE
    WHEN fwd_ret > $up AND drawdown > -$down THEN 'BUY'
    WHEN fwd_ret < -$up OR drawdown <= -$down THEN 'SELL'
    ELSE 'HOLD'
  END AS label
FROM outcomes
ORDER BY symbol, open_time

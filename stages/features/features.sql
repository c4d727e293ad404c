-- Features, one row per symbol and bar. Every value at bar t uses bars at or before t only:
-- windows are `ROWS BETWEEN n-1 PRECEDING AND CURRENT ROW`, LAG, and the causal ema()/wilder().
-- No LEAD, no FOLLOWING, no whole-column statistic: the look-ahead guard enforces it.
-- Conventions (DOMAIN.md section 3): ret_1 = close / lag(close) - 1; EMA alpha 2/(n+1) and
-- Wilder alpha 1/n, both seeded with the SMA of the first n values (TA-Lib); Bollinger uses the
-- population standard deviation.
-- Params: $interval ('1h'), $btc and $eth (leader symbols), $warmup (bars dropped per symbol).

WITH
-- The validated candles of one interval.
bars AS (
  SELECT symbol, open_time, open, high, low, close, volume, quote_volume
  FROM klines
  WHERE "interval" = $interval
),

-- Previous close, one-bar return, true range, gains and losses, position since the first bar.
steps AS (
  SELECT *,
    close / prev_close - 1.0 AS ret_1,
    CASE WHEN prev_close IS NULL THEN NULL
         ELSE GREATEST(high - low, ABS(high - prev_close), ABS(low - prev_close)) END AS true_range,
    CASE WHEN prev_close IS NULL THEN NULL ELSE GREATEST(close - prev_close, 0.0) END AS gain,
    CASE WHEN prev_close IS NULL THEN NULL ELSE GREATEST(prev_close - close, 0.0) END AS loss
  FROM (
    SELECT *,
      LAG(close) OVER w AS prev_close,
      LAG(high) OVER w AS prev_high,
      LAG(low) OVER w AS prev_low,
      LAG(close, 24) OVER w AS close_24_ago,
      ROW_NUMBER() OVER w AS bar_number
    FROM bars
    WINDOW w AS (PARTITION BY symbol ORDER BY open_time)
  ) AS lagged
),

-- Per-symbol indicators: the original eight, MACD lines, Bollinger, ATR, volume z-score,
-- and the Aster-native ones (liquidity, Corwin-Schultz spread, stability).
indicators AS (
  SELECT symbol, open_time, open, high, low, close, volume, quote_volume, ret_1, bar_number,
    ret_1 AS price_change,
    high / low AS high_low_ratio,
    volume / close AS volume_price_ratio,
    close / AVG(close) OVER (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 4 PRECEDING AND CURRENT ROW) AS sma_ratio_5,
    close / AVG(close) OVER (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 9 PRECEDING AND CURRENT ROW) AS sma_ratio_10,
    close / AVG(close) OVER (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 19 PRECEDING AND CURRENT ROW) AS sma_ratio_20,
    STDDEV_SAMP(ret_1) OVER (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 19 PRECEDING AND CURRENT ROW) AS volatility_20,
    wilder(gain, 14) OVER w AS avg_gain_14,
    wilder(loss, 14) OVER w AS avg_loss_14,
    ema(close, 12) OVER w - ema(close, 26) OVER w AS macd,
    AVG(close) OVER (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 19 PRECEDING AND CURRENT ROW) AS bb_mid,
    STDDEV_POP(close) OVER (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 19 PRECEDING AND CURRENT ROW) AS bb_sd,
    wilder(true_range, 14) OVER w AS atr_14,
    (volume - AVG(volume) OVER (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 19 PRECEDING AND CURRENT ROW))
      / NULLIF(STDDEV_SAMP(volume) OVER (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 19 PRECEDING AND CURRENT ROW), 0.0) AS volume_z,
    close / close_24_ago - 1.0 AS momentum_24,
    LN(AVG(quote_volume) OVER (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 167 PRECEDING AND CURRENT ROW)) AS liquidity_score,
    -- Corwin-Schultz: beta from two bars' log ranges, gamma from their joint range.
    POWER(LN(high / low), 2) + POWER(LN(prev_high / prev_low), 2) AS cs_beta,
    POWER(LN(GREATEST(high, prev_high) / LEAST(low, prev_low)), 2) AS cs_gamma,
    1.0 / (1.0 + 100.0 * STDDEV_SAMP(ret_1) OVER (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 23 PRECEDING AND CURRENT ROW)) AS price_stability,
    CAST(bar_number AS BIGINT) - 1 AS bars_since_listing
  FROM steps
  WINDOW w AS (PARTITION BY symbol ORDER BY open_time)
),

-- Second-level indicators: RSI, MACD signal and histogram, %B, bandwidth, the spread estimate.
oscillators AS (
  SELECT *,
    CASE WHEN avg_loss_14 = 0 THEN 100.0 ELSE 100.0 - 100.0 / (1.0 + avg_gain_14 / avg_loss_14) END AS rsi_14,
    ema(macd, 9) OVER w AS macd_signal,
    macd - ema(macd, 9) OVER w AS macd_hist,
    (close - (bb_mid - 2.0 * bb_sd)) / NULLIF(4.0 * bb_sd, 0.0) AS bb_percent_b,
    4.0 * bb_sd / bb_mid AS bb_bandwidth,
    AVG(GREATEST(2.0 * (EXP(cs_alpha) - 1.0) / (1.0 + EXP(cs_alpha)), 0.0))
      OVER (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 23 PRECEDING AND CURRENT ROW) AS spread_estimate
  FROM (
    SELECT *,
      (SQRT(2.0 * cs_beta) - SQRT(cs_beta)) / (3.0 - 2.0 * SQRT(2.0)) - SQRT(cs_gamma / (3.0 - 2.0 * SQRT(2.0))) AS cs_alpha
    FROM indicators
  ) AS with_alpha
  WINDOW w AS (PARTITION BY symbol ORDER BY open_time)
),

-- The leaders' returns beside every symbol's, joined on identical open time only.
leaders AS (
  SELECT o.*, b.ret_1 AS btc_ret, e.ret_1 AS eth_ret
  FROM oscillators o
  LEFT JOIN (SELECT open_time, ret_1 FROM steps WHERE symbol = $btc) b ON b.open_time = o.open_time
  LEFT JOIN (SELECT open_time, ret_1 FROM steps WHERE symbol = $eth) e ON e.open_time = o.open_time
),

-- Paired values: a return counts only when the leader's return at that time exists too.
pairs AS (
  SELECT *,
    CASE WHEN btc_ret IS NOT NULL THEN ret_1 END AS x_btc,
    CASE WHEN ret_1 IS NOT NULL THEN btc_ret END AS y_btc,
    CASE WHEN eth_ret IS NOT NULL THEN ret_1 END AS x_eth,
    CASE WHEN ret_1 IS NOT NULL THEN eth_ret END AS y_eth
  FROM leaders
),

-- Rolling Pearson correlations over 24, 168 and 720 bars, from windowed sums; null until the
-- window holds that many pairs.
correlations AS (
  SELECT *,
    CASE WHEN n_btc_24 >= 24 THEN (n_btc_24 * sxy_btc_24 - sx_btc_24 * sy_btc_24)
      / NULLIF(SQRT((n_btc_24 * sxx_btc_24 - sx_btc_24 * sx_btc_24) * (n_btc_24 * syy_btc_24 - sy_btc_24 * sy_btc_24)), 0.0) END AS corr_btc_24,
    CASE WHEN n_btc_168 >= 168 THEN (n_btc_168 * sxy_btc_168 - sx_btc_168 * sy_btc_168)
      / NULLIF(SQRT((n_btc_168 * sxx_btc_168 - sx_btc_168 * sx_btc_168) * (n_btc_168 * syy_btc_168 - sy_btc_168 * sy_btc_168)), 0.0) END AS corr_btc_168,
    CASE WHEN n_btc_720 >= 720 THEN (n_btc_720 * sxy_btc_720 - sx_btc_720 * sy_btc_720)
      / NULLIF(SQRT((n_btc_720 * sxx_btc_720 - sx_btc_720 * sx_btc_720) * (n_btc_720 * syy_btc_720 - sy_btc_720 * sy_btc_720)), 0.0) END AS corr_btc_720,
    CASE WHEN n_eth_24 >= 24 THEN (n_eth_24 * sxy_eth_24 - sx_eth_24 * sy_eth_24)
      / NULLIF(SQRT((n_eth_24 * sxx_eth_24 - sx_eth_24 * sx_eth_24) * (n_eth_24 * syy_eth_24 - sy_eth_24 * sy_eth_24)), 0.0) END AS corr_eth_24,
    CASE WHEN n_eth_168 >= 168 THEN (n_eth_168 * sxy_eth_168 - sx_eth_168 * sy_eth_168)
      / NULLIF(SQRT((n_eth_168 * sxx_eth_168 - sx_eth_168 * sx_eth_168) * (n_eth_168 * syy_eth_168 - sy_eth_168 * sy_eth_168)), 0.0) END AS corr_eth_168,
    CASE WHEN n_eth_720 >= 720 THEN (n_eth_720 * sxy_eth_720 - sx_eth_720 * sy_eth_720)
      / NULLIF(SQRT((n_eth_720 * sxx_eth_720 - sx_eth_720 * sx_eth_720) * (n_eth_720 * syy_eth_720 - sy_eth_720 * sy_eth_720)), 0.0) END AS corr_eth_720
  FROM (
    SELECT *,
      COUNT(x_btc) OVER w24 AS n_btc_24, SUM(x_btc) OVER w24 AS sx_btc_24, SUM(y_btc) OVER w24 AS sy_btc_24,
      SUM(x_btc * y_btc) OVER w24 AS sxy_btc_24, SUM(x_btc * x_btc) OVER w24 AS sxx_btc_24, SUM(y_btc * y_btc) OVER w24 AS syy_btc_24,
      COUNT(x_btc) OVER w168 AS n_btc_168, SUM(x_btc) OVER w168 AS sx_btc_168, SUM(y_btc) OVER w168 AS sy_btc_168,
      SUM(x_btc * y_btc) OVER w168 AS sxy_btc_168, SUM(x_btc * x_btc) OVER w168 AS sxx_btc_168, SUM(y_btc * y_btc) OVER w168 AS syy_btc_168,
      COUNT(x_btc) OVER w720 AS n_btc_720, SUM(x_btc) OVER w720 AS sx_btc_720, SUM(y_btc) OVER w720 AS sy_btc_720,
      SUM(x_btc * y_btc) OVER w720 AS sxy_btc_720, SUM(x_btc * x_btc) OVER w720 AS sxx_btc_720, SUM(y_btc * y_btc) OVER w720 AS syy_btc_720,
      COUNT(x_eth) OVER w24 AS n_eth_24, SUM(x_eth) OVER w24 AS sx_eth_24, SUM(y_eth) OVER w24 AS sy_eth_24,
      SUM(x_eth * y_eth) OVER w24 AS sxy_eth_24, SUM(x_eth * x_eth) OVER w24 AS sxx_eth_24, SUM(y_eth * y_eth) OVER w24 AS syy_eth_24,
      COUNT(x_eth) OVER w168 AS n_eth_168, SUM(x_eth) OVER w168 AS sx_eth_168, SUM(y_eth) OVER w168 AS sy_eth_168,
      SUM(x_eth * y_eth) OVER w168 AS sxy_eth_168, SUM(x_eth * x_eth) OVER w168 AS sxx_eth_168, SUM(y_eth * y_eth) OVER w168 AS syy_eth_168,
      COUNT(x_eth) OVER w720 AS n_eth_720, SUM(x_eth) OVER w720 AS sx_eth_720, SUM(y_eth) OVER w720 AS sy_eth_720,
      SUM(x_eth * y_eth) OVER w720 AS sxy_eth_720, SUM(x_eth * x_eth) OVER w720 AS sxx_eth_720, SUM(y_eth * y_eth) OVER w720 AS syy_eth_720
    FROM pairs
    WINDOW
      w24 AS (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 23 PRECEDING AND CURRENT ROW),
      w168 AS (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 167 PRECEDING AND CURRENT ROW),
      w720 AS (PARTITION BY symbol ORDER BY open_time ROWS BETWEEN 719 PRECEDING AND CURRENT ROW)
  ) AS sums
),

-- Market breadth in each bar, over every symbol present in that bar.
breadth AS (
  SELECT open_time,
    AVG(CASE WHEN volume_z > 2.0 THEN 1.0 ELSE 0.0 END) AS volume_spike_share,
    AVG(CASE WHEN rsi_14 > 70.0 THEN 1.0 ELSE 0.0 END) - AVG(CASE WHEN rsi_14 < 30.0 THEN 1.0 ELSE 0.0 END) AS rsi_alignment,
    AVG(CASE WHEN macd > macd_signal THEN 1.0 ELSE 0.0 END) AS macd_alignment,
    AVG(CASE WHEN close > bb_mid THEN 1.0 ELSE 0.0 END) AS bollinger_alignment,
    AVG(CASE WHEN momentum_24 > 0.0 THEN 1.0 ELSE 0.0 END) AS momentum_alignment
  FROM oscillators
  GROUP BY open_time
)

SELECT
  c.symbol, c.open_time, c.close,
  c.price_change, c.high_low_ratio, c.volume_price_ratio,
  c.sma_ratio_5, c.sma_ratio_10, c.sma_ratio_20, c.volatility_20, c.rsi_14,
  c.macd, c.macd_signal, c.macd_hist, c.bb_percent_b, c.bb_bandwidth, c.atr_14, c.volume_z,
  c.momentum_24,
  c.corr_btc_24, c.corr_btc_168, c.corr_btc_720, c.corr_eth_24, c.corr_eth_168, c.corr_eth_720,
  b.volume_spike_share, b.rsi_alignment, b.macd_alignment, b.bollinger_alignment, b.momentum_alignment,
  c.liquidity_score, c.spread_estimate, c.price_stability, c.bars_since_listing
FROM correlations c
JOIN breadth b ON b.open_time = c.open_time
-- Warm-up: drop each symbol's first bars, where recursive indicators still remember their seed.
WHERE c.bar_number > $warmup
ORDER BY c.symbol, c.open_time

-- Features, one row per symbol and bar. Every value at bar t uses bars at or before t only:
-- LAG, and the causal window functions ema(), wilder(), rolling_mean(), rolling_std(),
-- rolling_std_pop() and rolling_corr() over the last n rows. No LEAD, no FOLLOWING, no
-- whole-column statistic: the look-ahead guard enforces it.
-- Conventions (DOMAIN.md section 3): ret_1 = close / lag(close) - 1; EMA alpha 2/(n+1) and
-- Wilder alpha 1/n, both seeded with the SMA of the first n values (TA-Lib); volatility is the
-- sample standard deviation of ret_1; Bollinger uses the population standard deviation.
-- Params: $interval ('1h'), $bar_ms (its length in ms), $btc and $eth (leader symbols),
-- $warmup (bars dropped per symbol).
-- Perpetuals (DOMAIN.md section 8), from the lake's other tables (null where not collected):
-- the last funding rate settled by the bar's close, its z-score over the last 21 settlements
-- and its annualised value; the basis (mark / index - 1) and its change; the premium index.
-- Higher timeframes: 4h and 1d bars joined as of the last one that closed before the row's
-- close (close_time < row close_time, never the bar containing the row), as pandas'
-- merge_asof(allow_exact_matches=False) with a tolerance of one higher bar: a missing higher
-- bar leaves nulls rather than an older bar's values.
-- The leaders must be in the input: a quarantined or missing one would leave its columns empty.
-- asterflow: require symbol $btc, $eth in klines where "interval" = $interval

WITH
-- The validated candles of one interval.
bars AS (
  SELECT symbol, open_time, high, low, close, volume, quote_volume
  FROM klines
  WHERE "interval" = $interval
),

-- Each settled funding rate with its z-score over the last 21 settlements (a week at 8 hours)
-- and its annualised value.
settlements AS (
  SELECT symbol, funding_time, funding_rate,
    funding_rate * 8760.0 / NULLIF(CAST(funding_interval_hours AS DOUBLE), 0.0) AS funding_annualised,
    (funding_rate - rolling_mean(funding_rate, 21) OVER f)
      / NULLIF(rolling_std(funding_rate, 21) OVER f, 0.0) AS funding_z
  FROM funding
  WINDOW f AS (PARTITION BY symbol ORDER BY funding_time)
),
-- The last settlement in each bar (a few ms after the hour: the bar opening on that hour,
-- whose close it precedes), found by its time: MAX is a plain aggregate, several times
-- cheaper than last_value(... ORDER BY funding_time) over the same groups. A symbol settles
-- once at a given time (the lake keeps one row per symbol and funding time), so the join
-- back finds one settlement per bar.
bar_settlements AS (
  SELECT symbol, MAX(funding_time) AS funding_time
  FROM funding
  GROUP BY symbol, funding_time - funding_time % $bar_ms
),
funding_bars AS (
  SELECT s.symbol, s.funding_time - s.funding_time % $bar_ms AS open_time,
    s.funding_rate AS settled_rate, s.funding_z AS settled_z,
    s.funding_annualised AS settled_annualised
  FROM bar_settlements AS l
  JOIN settlements AS s ON s.symbol = l.symbol AND s.funding_time = l.funding_time
),

-- The basis of each bar, mark over index, and the premium index, same interval and open time.
basis_bars AS (
  SELECT m.symbol, m.open_time, m.close / NULLIF(x.close, 0.0) - 1.0 AS basis
  FROM index_klines AS x
  JOIN mark_klines AS m ON m.symbol = x.symbol AND m.open_time = x.open_time
  WHERE m."interval" = $interval AND x."interval" = $interval
),
premium_bars AS (
  SELECT symbol, open_time, close AS premium
  FROM premium_klines
  WHERE "interval" = $interval
),

-- 4h and 1d bars: the return, the close over its 20-bar average, the volatility and RSI(14)
-- of that timeframe, each as of the bar's own close.
-- (Gains and losses as in `steps` below.)
higher_steps AS (
  SELECT symbol, "interval", open_time, close,
    close / LAG(close) OVER h - 1.0 AS ret,
    (ABS(close - LAG(close) OVER h) + (close - LAG(close) OVER h)) / 2.0 AS gain,
    (ABS(close - LAG(close) OVER h) - (close - LAG(close) OVER h)) / 2.0 AS loss,
    rolling_mean(close, 20) OVER h AS sma_20,
    ROW_NUMBER() OVER h AS n
  FROM klines
  WHERE "interval" IN ('4h', '1d')
  WINDOW h AS (PARTITION BY "interval", symbol ORDER BY open_time)
),
higher AS (
  SELECT symbol, "interval", open_time, ret,
    -- Full windows only: 20 closes, 20 returns. RSI after its own warm-up of three times its
    -- period (42 bars of that timeframe: a week of 4h bars, six weeks of daily ones), which
    -- the hourly $warmup does not cover for daily bars.
    CASE WHEN n >= 20 THEN close / sma_20 END AS sma_ratio_20,
    CASE WHEN n >= 21 THEN rolling_std(ret, 20) OVER h END AS volatility_20,
    CASE WHEN n <= 42 THEN NULL
         WHEN wilder(gain, 14) OVER h = 0 AND wilder(loss, 14) OVER h = 0 THEN 50.0
         WHEN wilder(loss, 14) OVER h = 0 THEN 100.0
         ELSE 100.0 - 100.0 / (1.0 + wilder(gain, 14) OVER h / wilder(loss, 14) OVER h) END AS rsi_14
  FROM higher_steps
  WINDOW h AS (PARTITION BY "interval", symbol ORDER BY open_time)
),
h4 AS (SELECT * FROM higher WHERE "interval" = '4h'),
d1 AS (SELECT * FROM higher WHERE "interval" = '1d'),

-- Per symbol, over the raw columns: previous bars, position since the first bar, moving
-- averages and deviations of price and volume, the MACD line. Lags count rows: across a
-- missing bar (validate keeps them rare) a return spans the gap.
raw_windows AS (
  SELECT symbol, open_time, high, low, close, volume,
    LAG(close) OVER w AS prev_close,
    LAG(high) OVER w AS prev_high,
    LAG(low) OVER w AS prev_low,
    LAG(close, 24) OVER w AS close_24_ago,
    ROW_NUMBER() OVER w AS bar_number,
    rolling_mean(close, 5) OVER w AS sma_5,
    rolling_mean(close, 10) OVER w AS sma_10,
    rolling_mean(close, 20) OVER w AS bb_mid,
    rolling_std_pop(close, 20) OVER w AS bb_sd,
    ema(close, 12) OVER w - ema(close, 26) OVER w AS macd,
    rolling_mean(volume, 20) OVER w AS volume_mean_20,
    rolling_std(volume, 20) OVER w AS volume_sd_20,
    LN(rolling_mean(quote_volume, 168) OVER w) AS liquidity_score
  FROM bars
  WINDOW w AS (PARTITION BY symbol ORDER BY open_time)
),

-- One-bar return, true range, gains and losses, and the Corwin-Schultz spread of two bars
-- (beta from their log ranges, gamma from their joint range). A gain is max(d, 0) and a loss
-- max(-d, 0) for the change d, written (|d| + d) / 2 and (|d| - d) / 2: exactly those values
-- for any finite d (an infinite price would give NaN), null where d is (GREATEST would skip
-- the null and give 0), and a fraction of the cost of GREATEST inside a CASE. Squares are
-- products, not POWER(x, 2) (a pow() per row); DataFusion computes a repeated expression
-- once. (Not a subquery of log ranges: a Ballista scheduler refuses a plan nested that much
-- deeper, at prost's decoding limit.)
steps AS (
  SELECT *,
    close / prev_close - 1.0 AS ret_1,
    CASE WHEN prev_close IS NULL THEN NULL
         ELSE GREATEST(high - low, ABS(high - prev_close), ABS(low - prev_close)) END AS true_range,
    (ABS(close - prev_close) + (close - prev_close)) / 2.0 AS gain,
    (ABS(close - prev_close) - (close - prev_close)) / 2.0 AS loss,
    GREATEST(2.0 * (EXP(cs_alpha) - 1.0) / (1.0 + EXP(cs_alpha)), 0.0) AS cs_spread
  FROM (
    SELECT *,
      (SQRT(2.0 * cs_beta) - SQRT(cs_beta)) / (3.0 - 2.0 * SQRT(2.0)) - SQRT(cs_gamma / (3.0 - 2.0 * SQRT(2.0))) AS cs_alpha
    FROM (
      SELECT *,
        LN(high / low) * LN(high / low) + LN(prev_high / prev_low) * LN(prev_high / prev_low) AS cs_beta,
        LN(GREATEST(high, prev_high) / LEAST(low, prev_low))
          * LN(GREATEST(high, prev_high) / LEAST(low, prev_low)) AS cs_gamma
      FROM raw_windows
    ) AS ranges
  ) AS with_alpha
),

-- Per symbol, over the returns and the MACD line: volatility, Wilder averages for RSI and ATR,
-- the MACD signal, stability and the spread estimate.
return_windows AS (
  SELECT *,
    rolling_std(ret_1, 20) OVER w AS volatility_20,
    wilder(gain, 14) OVER w AS avg_gain_14,
    wilder(loss, 14) OVER w AS avg_loss_14,
    wilder(true_range, 14) OVER w AS atr_14,
    ema(macd, 9) OVER w AS macd_signal,
    1.0 / (1.0 + 100.0 * rolling_std(ret_1, 24) OVER w) AS price_stability,
    rolling_mean(cs_spread, 24) OVER w AS spread_estimate
  FROM steps
  WINDOW w AS (PARTITION BY symbol ORDER BY open_time)
),

-- The per-symbol indicators: the original eight, MACD, Bollinger, ATR, volume z-score,
-- momentum, and the Aster-native ones.
indicators AS (
  SELECT symbol, open_time, close, ret_1, bar_number,
    ret_1 AS price_change,
    high / low AS high_low_ratio,
    volume / close AS volume_price_ratio,
    close / sma_5 AS sma_ratio_5,
    close / sma_10 AS sma_ratio_10,
    close / bb_mid AS sma_ratio_20,
    volatility_20,
    -- A flat market (no gains, no losses) is neutral, 50; only gains is 100.
    CASE WHEN avg_gain_14 = 0 AND avg_loss_14 = 0 THEN 50.0
         WHEN avg_loss_14 = 0 THEN 100.0
         ELSE 100.0 - 100.0 / (1.0 + avg_gain_14 / avg_loss_14) END AS rsi_14,
    macd, macd_signal, macd - macd_signal AS macd_hist,
    bb_mid,
    (close - (bb_mid - 2.0 * bb_sd)) / NULLIF(4.0 * bb_sd, 0.0) AS bb_percent_b,
    4.0 * bb_sd / bb_mid AS bb_bandwidth,
    atr_14,
    (volume - volume_mean_20) / NULLIF(volume_sd_20, 0.0) AS volume_z,
    close / close_24_ago - 1.0 AS momentum_24,
    liquidity_score, spread_estimate, price_stability,
    -- Bars since the symbol's first stored bar: its listing when the history reaches back to it.
    CAST(bar_number AS BIGINT) - 1 AS bars_since_listing
  FROM return_windows
),

-- Cross-asset context per bar, over every symbol in that same bar: the leaders' returns, and
-- the market's breadth. A symbol whose indicator is not defined yet (still warming up) is left
-- out of that share, not counted as a no: its comparison is null, and AVG skips nulls (a
-- cast comparison is several times cheaper than the same test in a CASE).
market AS (
  SELECT open_time,
    MAX(CASE WHEN symbol = $btc THEN ret_1 END) AS btc_ret,
    MAX(CASE WHEN symbol = $eth THEN ret_1 END) AS eth_ret,
    AVG(CAST(volume_z > 2.0 AS DOUBLE)) AS volume_spike_share,
    AVG(CAST(rsi_14 > 70.0 AS DOUBLE)) - AVG(CAST(rsi_14 < 30.0 AS DOUBLE)) AS rsi_alignment,
    AVG(CAST(macd > macd_signal AS DOUBLE)) AS macd_alignment,
    AVG(CAST(close > bb_mid AS DOUBLE)) AS bollinger_alignment,
    AVG(CAST(momentum_24 > 0.0 AS DOUBLE)) AS momentum_alignment
  FROM indicators
  GROUP BY open_time
),

-- Each symbol's bar beside the market's same bar (joined on open time only), and rolling
-- Pearson correlations of its returns with the leaders' over 24, 168 and 720 bars, over the
-- rows where both returns exist; null until the window holds that many pairs. The small
-- per-bar table comes first: a join holds its left input in memory and streams the right one.
correlations AS (
  SELECT i.*, m.btc_ret, m.eth_ret, m.volume_spike_share, m.rsi_alignment, m.macd_alignment,
    m.bollinger_alignment, m.momentum_alignment,
    rolling_corr(i.ret_1, m.btc_ret, 24) OVER w AS corr_btc_24,
    rolling_corr(i.ret_1, m.btc_ret, 168) OVER w AS corr_btc_168,
    rolling_corr(i.ret_1, m.btc_ret, 720) OVER w AS corr_btc_720,
    rolling_corr(i.ret_1, m.eth_ret, 24) OVER w AS corr_eth_24,
    rolling_corr(i.ret_1, m.eth_ret, 168) OVER w AS corr_eth_168,
    rolling_corr(i.ret_1, m.eth_ret, 720) OVER w AS corr_eth_720
  FROM market AS m
  JOIN indicators AS i ON i.open_time = m.open_time
  WINDOW w AS (PARTITION BY i.symbol ORDER BY i.open_time)
),

-- The perpetual's data and the higher timeframes beside each bar. The small keyed tables come
-- first (held in memory), the bars stream through in their order. The higher bar joined is
-- the one that closed last before this bar's close: with c = open_time + bar_ms - 1, the bar
-- opening at floor(c, H) - H (its close, floor(c, H) - 1, is before c; the bar containing c
-- closes at or after it).
joined AS (
  SELECT c.*, f.settled_rate, f.settled_z, f.settled_annualised, b.basis, p.premium,
    h.ret AS ret_4h, h.sma_ratio_20 AS sma_ratio_20_4h, h.volatility_20 AS volatility_20_4h, h.rsi_14 AS rsi_14_4h,
    d.ret AS ret_1d, d.sma_ratio_20 AS sma_ratio_20_1d, d.volatility_20 AS volatility_20_1d, d.rsi_14 AS rsi_14_1d
  FROM d1 AS d
  RIGHT JOIN (h4 AS h
    RIGHT JOIN (premium_bars AS p
      RIGHT JOIN (basis_bars AS b
        RIGHT JOIN (funding_bars AS f
          RIGHT JOIN correlations AS c
          ON f.symbol = c.symbol AND f.open_time = c.open_time)
        ON b.symbol = c.symbol AND b.open_time = c.open_time)
      ON p.symbol = c.symbol AND p.open_time = c.open_time)
    ON h.symbol = c.symbol
      AND h.open_time = (c.open_time + $bar_ms - 1) - (c.open_time + $bar_ms - 1) % 14400000 - 14400000)
  ON d.symbol = c.symbol
    AND d.open_time = (c.open_time + $bar_ms - 1) - (c.open_time + $bar_ms - 1) % 86400000 - 86400000
),

-- Funding carried from its settlement to every later bar (at most a day of bars: a series
-- that stopped goes null), and the basis's change over one bar.
perp AS (
  SELECT *,
    last_known(settled_rate, 86400000 / $bar_ms) OVER w AS funding_rate,
    last_known(settled_z, 86400000 / $bar_ms) OVER w AS funding_z,
    last_known(settled_annualised, 86400000 / $bar_ms) OVER w AS funding_annualised,
    basis - LAG(basis) OVER w AS basis_change
  FROM joined
  WINDOW w AS (PARTITION BY symbol ORDER BY open_time)
)

SELECT
  symbol, open_time, close,
  price_change, high_low_ratio, volume_price_ratio,
  sma_ratio_5, sma_ratio_10, sma_ratio_20, volatility_20, rsi_14,
  macd, macd_signal, macd_hist, bb_percent_b, bb_bandwidth, atr_14, volume_z, momentum_24,
  btc_ret, eth_ret,
  corr_btc_24, corr_btc_168, corr_btc_720, corr_eth_24, corr_eth_168, corr_eth_720,
  volume_spike_share, rsi_alignment, macd_alignment, bollinger_alignment, momentum_alignment,
  liquidity_score, spread_estimate, price_stability, bars_since_listing,
  funding_rate, funding_z, funding_annualised, basis, basis_change, premium,
  ret_4h, sma_ratio_20_4h, volatility_20_4h, rsi_14_4h,
  ret_1d, sma_ratio_20_1d, volatility_20_1d, rsi_14_1d
FROM perp
-- Warm-up: drop each symbol's first bars, where recursive indicators still remember their seed.
WHERE bar_number > $warmup
ORDER BY symbol, open_time

//! The exchange's vocabulary: intervals, klines, symbols, declared rate limits and the
//! weight-by-page-size table of `GET /klines`. Shared by the client, the replay exchange and the lake.

use serde::{Deserialize, Serialize};

/// The largest page `GET /klines` serves.
pub const MAX_PAGE: u32 = 1500;

/// The weight of one `GET /klines` call asking for `limit` rows:
/// `[1,100)` -> 1, `[100,500)` -> 2, `[500,1000]` -> 5, `> 1000` -> 10.
pub fn klines_weight(limit: u32) -> u32 {
    match limit {
        0..=99 => 1,
        100..=499 => 2,
        500..=1000 => 5,
        _ => 10,
    }
}

/// The page size that fetches the most rows per unit of weight (499: 2 weight for 499 rows).
pub fn weight_optimal_page() -> u32 {
    [99, 499, 1000, MAX_PAGE]
        .into_iter()
        .min_by(|a, b| {
            let cost = |limit: u32| klines_weight(limit) as f64 / limit as f64;
            cost(*a).total_cmp(&cost(*b))
        })
        .unwrap_or(499)
}

/// The least total weight that fetches `bars` rows in pages of at most `page` rows, asking
/// for exactly what is left on the last page.
pub fn least_weight(bars: u64, page: u32) -> u64 {
    let page = u64::from(page.max(1));
    let full = bars / page;
    let rest = bars % page;
    full * u64::from(klines_weight(page as u32))
        + if rest == 0 {
            0
        } else {
            u64::from(klines_weight(rest as u32))
        }
}

/// A kline interval such as `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Interval {
    millis: u64,
    name: &'static str,
}

const INTERVALS: &[(&str, u64)] = &[
    ("1m", 60_000),
    ("3m", 180_000),
    ("5m", 300_000),
    ("15m", 900_000),
    ("30m", 1_800_000),
    ("1h", 3_600_000),
    ("2h", 7_200_000),
    ("4h", 14_400_000),
    ("6h", 21_600_000),
    ("8h", 28_800_000),
    ("12h", 43_200_000),
    ("1d", 86_400_000),
    ("3d", 259_200_000),
    ("1w", 604_800_000),
];

impl Interval {
    /// Parses one of the exchange's fixed-length intervals (`1M`, a calendar month, is not one).
    pub fn parse(text: &str) -> Result<Self, String> {
        INTERVALS
            .iter()
            .find(|(name, _)| *name == text)
            .map(|&(name, millis)| Self { millis, name })
            .ok_or_else(|| {
                let names: Vec<&str> = INTERVALS.iter().map(|(name, _)| *name).collect();
                format!("unknown interval `{text}`; intervals: {}", names.join(", "))
            })
    }

    pub fn millis(self) -> u64 {
        self.millis
    }

    pub fn name(self) -> &'static str {
        self.name
    }

    /// The open time of the candle containing `ms`. Weekly candles open on Mondays, as on Binance.
    pub fn floor(self, ms: u64) -> u64 {
        if self.millis == 604_800_000 {
            // The epoch was a Thursday; Monday 1970-01-05 is the first weekly open.
            let monday = 4 * 86_400_000;
            return if ms < monday {
                0
            } else {
                monday + (ms - monday) / self.millis * self.millis
            };
        }
        ms / self.millis * self.millis
    }

    /// The open time of the first candle opening at or after `ms`.
    pub fn ceil(self, ms: u64) -> u64 {
        let floor = self.floor(ms);
        if floor == ms { ms } else { floor + self.millis }
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Serialize for Interval {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Interval::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One candle, as the exchange serves it (prices parsed from their decimal strings).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Kline {
    pub open_time: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
    pub close_time: i64,
    pub quote_volume: f64,
    pub trades: i64,
    pub taker_buy_base: f64,
    pub taker_buy_quote: f64,
}

/// A number the exchange sends as a string (`"0.0100"`), or as a bare number.
#[derive(Debug, Clone, Copy)]
pub struct Decimal(pub f64);

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Decimal;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a decimal number or a string holding one")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Decimal, E> {
                text.trim()
                    .parse::<f64>()
                    .map(Decimal)
                    .map_err(|_| E::custom(format!("`{text}` is not a number")))
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Decimal, E> {
                Ok(Decimal(value))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Decimal, E> {
                Ok(Decimal(value as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Decimal, E> {
                Ok(Decimal(value as f64))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One row of `GET /klines`: a 12-element array.
#[derive(Debug, Deserialize)]
pub struct KlineRow(
    pub i64,
    pub Decimal,
    pub Decimal,
    pub Decimal,
    pub Decimal,
    pub Decimal,
    pub i64,
    pub Decimal,
    pub i64,
    pub Decimal,
    pub Decimal,
    pub serde::de::IgnoredAny,
);

impl From<KlineRow> for Kline {
    fn from(row: KlineRow) -> Self {
        Kline {
            open_time: row.0,
            open: row.1.0,
            high: row.2.0,
            low: row.3.0,
            close: row.4.0,
            volume: row.5.0,
            close_time: row.6,
            quote_volume: row.7.0,
            trades: row.8,
            taker_buy_base: row.9.0,
            taker_buy_quote: row.10.0,
        }
    }
}

/// A table of the lake, and the endpoint that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataset {
    /// Trades: `GET /klines`.
    Klines,
    /// Settled funding rates: `GET /fundingRate` (and each symbol's interval, cap and floor
    /// from `GET /fundingInfo`).
    Funding,
    /// `GET /markPriceKlines`: the mark price, which drives liquidations; volume fields zero.
    MarkKlines,
    /// `GET /indexPriceKlines`: the spot index the contract tracks; volume fields zero.
    IndexKlines,
    /// `GET /premiumIndexKlines` (Binance; Aster does not serve it): the premium index, a
    /// signed fraction around zero.
    PremiumKlines,
}

impl Dataset {
    pub const ALL: [Dataset; 5] = [
        Dataset::Klines,
        Dataset::Funding,
        Dataset::MarkKlines,
        Dataset::IndexKlines,
        Dataset::PremiumKlines,
    ];

    /// The lake directory and SQL table: `klines`, `funding`, `mark_klines`, ...
    pub fn table(self) -> &'static str {
        match self {
            Dataset::Klines => "klines",
            Dataset::Funding => "funding",
            Dataset::MarkKlines => "mark_klines",
            Dataset::IndexKlines => "index_klines",
            Dataset::PremiumKlines => "premium_klines",
        }
    }

    pub fn from_table(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|dataset| dataset.table() == name)
    }

    /// The endpoint under the path prefix.
    pub fn endpoint(self) -> &'static str {
        match self {
            Dataset::Klines => "klines",
            Dataset::Funding => "fundingRate",
            Dataset::MarkKlines => "markPriceKlines",
            Dataset::IndexKlines => "indexPriceKlines",
            Dataset::PremiumKlines => "premiumIndexKlines",
        }
    }

    /// Rows in the kline layout (one per interval and symbol); funding has its own.
    pub fn is_kline_shaped(self) -> bool {
        self != Dataset::Funding
    }

    /// Whether volume, trades and taker fields mean anything (only for trades).
    pub fn has_volume(self) -> bool {
        self == Dataset::Klines
    }

    /// Whether the values are prices (> 0); the premium index is a signed fraction.
    pub fn is_price(self) -> bool {
        !matches!(self, Dataset::Funding | Dataset::PremiumKlines)
    }

    /// The query parameter naming the instrument: Binance's `indexPriceKlines` takes the
    /// `pair` (for a USD-M perpetual, the symbol's name), every other endpoint the `symbol`.
    pub fn instrument_param(self) -> &'static str {
        match self {
            Dataset::IndexKlines => "pair",
            _ => "symbol",
        }
    }

    /// The weight of one call asking for `limit` rows: the klines table for kline-shaped
    /// endpoints; 1 for `fundingRate` (Aster; Binance shares a separate 500-per-5-minutes
    /// budget between `fundingRate` and `fundingInfo`).
    pub fn weight(self, limit: u32) -> u32 {
        match self {
            Dataset::Funding => 1,
            _ => klines_weight(limit),
        }
    }
}

impl std::fmt::Display for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.table())
    }
}

/// The largest page `GET /fundingRate` serves.
pub const MAX_FUNDING_PAGE: u32 = 1000;

/// One settled funding rate, with the symbol's funding schedule as known when it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Funding {
    /// When it was settled: on the hour of the schedule, often a few milliseconds after.
    pub funding_time: i64,
    /// Paid by longs to shorts when positive, per unit of notional.
    pub funding_rate: f64,
    /// The symbol's funding interval in hours (0: unknown).
    pub interval_hours: i64,
    /// The rate's cap and floor, when the exchange states them.
    pub rate_cap: Option<f64>,
    pub rate_floor: Option<f64>,
}

/// One row of `GET /fundingRate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FundingRow {
    pub symbol: String,
    pub funding_rate: Decimal,
    pub funding_time: i64,
}

/// One row of `GET /fundingInfo`: a symbol whose funding differs from the default.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FundingInfo {
    pub symbol: String,
    #[serde(default)]
    pub adjusted_funding_rate_cap: Option<Decimal>,
    #[serde(default)]
    pub adjusted_funding_rate_floor: Option<Decimal>,
    #[serde(default)]
    pub funding_interval_hours: Option<i64>,
}

/// The funding interval of a symbol `fundingInfo` does not list: Binance's and Aster's default.
pub const DEFAULT_FUNDING_HOURS: i64 = 8;

/// A `rateLimits` entry of `exchangeInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub rate_limit_type: String,
    pub interval: String,
    pub interval_num: u64,
    pub limit: u64,
}

impl RateLimit {
    /// The window's length, or `None` for an interval this client does not know.
    pub fn window_ms(&self) -> Option<u64> {
        let unit = match self.interval.as_str() {
            "SECOND" => 1_000,
            "MINUTE" => 60_000,
            "HOUR" => 3_600_000,
            "DAY" => 86_400_000,
            _ => return None,
        };
        Some(unit * self.interval_num.max(1))
    }

    /// The suffix of the used-weight header for this window: `1m`, `10s`.
    pub fn header_suffix(&self) -> String {
        let letter = match self.interval.as_str() {
            "SECOND" => "s",
            "MINUTE" => "m",
            "HOUR" => "h",
            "DAY" => "d",
            other => other,
        };
        format!("{}{}", self.interval_num, letter)
    }

    pub fn is_request_weight(&self) -> bool {
        self.rate_limit_type == "REQUEST_WEIGHT"
    }
}

/// `GET /exchangeInfo`, the parts asterflow reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeInfo {
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    #[serde(default)]
    pub symbols: Vec<SymbolInfo>,
}

/// One symbol of `exchangeInfo`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymbolInfo {
    pub symbol: String,
    #[serde(default)]
    pub pair: String,
    #[serde(default)]
    pub contract_type: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub base_asset: String,
    #[serde(default)]
    pub quote_asset: String,
    #[serde(default)]
    pub margin_asset: String,
    #[serde(default)]
    pub onboard_date: Option<i64>,
    #[serde(default)]
    pub filters: Vec<serde_json::Value>,
}

impl SymbolInfo {
    /// A numeric field of the filter of type `kind`, such as `PRICE_FILTER.tickSize`.
    pub fn filter_value(&self, kind: &str, field: &str) -> Option<f64> {
        self.filters
            .iter()
            .find(|filter| filter.get("filterType").and_then(|t| t.as_str()) == Some(kind))
            .and_then(|filter| filter.get(field))
            .and_then(|value| match value {
                serde_json::Value::String(text) => text.parse().ok(),
                serde_json::Value::Number(number) => number.as_f64(),
                _ => None,
            })
    }
}

/// One entry of `GET /ticker/24hr`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticker24h {
    pub symbol: String,
    pub quote_volume: Decimal,
}

/// The error body every Binance-compatible endpoint uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiErrorBody {
    pub code: i64,
    pub msg: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_table_and_bound() {
        assert_eq!(klines_weight(99), 1);
        assert_eq!(klines_weight(100), 2);
        assert_eq!(klines_weight(499), 2);
        assert_eq!(klines_weight(500), 5);
        assert_eq!(klines_weight(1000), 5);
        assert_eq!(klines_weight(1001), 10);
        assert_eq!(weight_optimal_page(), 499);
        // 8760 hourly bars: 17 full pages of 499 and a last page of 277.
        assert_eq!(least_weight(8760, 499), 17 * 2 + 2);
        assert_eq!(least_weight(598, 499), 3);
        assert_eq!(least_weight(0, 499), 0);
    }

    #[test]
    fn intervals_floor_and_parse() {
        let hour = Interval::parse("1h").unwrap();
        assert_eq!(hour.floor(3_600_001), 3_600_000);
        assert_eq!(hour.ceil(3_600_001), 7_200_000);
        assert_eq!(hour.ceil(3_600_000), 3_600_000);
        assert!(Interval::parse("1M").is_err());
        let week = Interval::parse("1w").unwrap();
        // 2024-01-01 was a Monday.
        assert_eq!(week.floor(1_704_067_200_000 + 1000), 1_704_067_200_000);
    }

    #[test]
    fn parses_kline_rows() {
        let row: KlineRow = serde_json::from_str(
            r#"[1704067200000,"42000.1","42100","41900.5","42050","12.5",1704070799999,"525000.0",321,"6.1","256000.0","0"]"#,
        )
        .unwrap();
        let kline = Kline::from(row);
        assert_eq!(kline.open_time, 1_704_067_200_000);
        assert_eq!(kline.high, 42100.0);
        assert_eq!(kline.trades, 321);
    }

    #[test]
    fn rate_limit_windows() {
        let limit = RateLimit {
            rate_limit_type: "REQUEST_WEIGHT".into(),
            interval: "SECOND".into(),
            interval_num: 10,
            limit: 400,
        };
        assert_eq!(limit.window_ms(), Some(10_000));
        assert_eq!(limit.header_suffix(), "10s");
    }
}

/// Quote assets of Binance-compatible futures and spot pairs, longest first, so a symbol ends
/// with at most one of them the way it was meant (`FDUSD` before `USD`).
pub const QUOTE_ASSETS: [&str; 15] = [
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "BTC", "ETH", "BNB", "DAI", "EUR", "TRY",
    "BRL", "JPY", "USD",
];

/// `ADABTC` -> (`ADA`, `BTC`): a symbol split at the known quote asset it ends with, leaving
/// a non-empty base; `None` when it ends with none of them.
pub fn split_symbol(symbol: &str) -> Option<(&str, &'static str)> {
    QUOTE_ASSETS.iter().find_map(|quote| {
        symbol
            .strip_suffix(quote)
            .filter(|base| !base.is_empty())
            .map(|base| (base, *quote))
    })
}

#[cfg(test)]
mod quote_tests {
    use super::split_symbol;

    #[test]
    fn symbols_split_at_their_quote_asset() {
        assert_eq!(split_symbol("BTCUSDT"), Some(("BTC", "USDT")));
        assert_eq!(split_symbol("ADABTC"), Some(("ADA", "BTC")));
        assert_eq!(split_symbol("ETHFDUSD"), Some(("ETH", "FDUSD")));
        assert_eq!(split_symbol("SOLUSDC"), Some(("SOL", "USDC")));
        assert_eq!(split_symbol("BNBETH"), Some(("BNB", "ETH")));
        assert_eq!(split_symbol("USDT"), None);
        assert_eq!(split_symbol("XYZ123"), None);
    }
}

//! Scenario files (`data/scenarios/*.yaml`): the market, the limits and the faults of a replay
//! exchange. Parsed with located diagnostics like pipelines.
//!
//! ```yaml
//! seed: 42
//! clock: {now: 2025-06-01T00:00:00Z}   # the server clock starts here and runs; omit for wall time
//! limits:
//!   request_weight: {interval: MINUTE, interval_num: 1, limit: 2400}
//!   retry_after: true                  # send Retry-After with 429s and 418s
//!   ban_after: 16                      # requests sent while told to back off, then 418
//!   ban_for: 2m
//! market:
//!   simulate:
//!     genesis: 2024-01-01
//!     assets:
//!       - {base: BTC, price: 42000, beta: 1.0, vol: 0.15}
//!       - {base: SOL, price: 100, beta: 1.4, vol: 0.6, listed: 2024-03-01}
//!     generated: {count: 10}           # ALT001USDT ... with random betas, prices and listings
//!     regimes: false                   # constant volatility (default: calm and stormy spells)
//!     lead_lag: {leader: BTC, beta: 0.8}   # planted effect: others add 0.8 x the leader's last return
//!   # files: data/replay/binance       # or: a directory of SYMBOL-INTERVAL-*.csv / .parquet files
//! faults:
//!   error_rate: 0.05                   # share of requests answered 500/503
//!   truncate_rate: 0.05                # share of 200s whose body is cut in half
//!   latency: 20ms
//!   rate_limit_every: 40               # every 40th request gets a 429 burst
//!   hostile_symbols: true              # exchangeInfo lists names such as ../../etc/passwd
//!   ban_after_requests: 100            # 418 from the 101st request on
//! unserved: [premiumIndexKlines]       # endpoints answered 404, as Aster answers this one
//! ```
//!
//! A simulated market also serves the perpetual's other data: a premium over the index that
//! persists and follows returns, mark and index klines a small spread from the last price,
//! premium index klines, and funding settled every 8 hours (4 for every third symbol) from
//! the mean premium, capped. A `files` market serves `SYMBOL-fundingRate-*.csv` files and
//! kline files under `markPriceKlines/`, `indexPriceKlines/` and `premiumIndexKlines/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::diagnostic::location::{Anchor, LocationIndex, YamlPath};
use crate::diagnostic::{Diagnostic, parse_yaml_file};
use crate::market::model::{Interval, RateLimit};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub clock: ClockSpec,
    #[serde(default)]
    pub limits: LimitsSpec,
    pub market: MarketSpec,
    #[serde(default)]
    pub faults: Faults,
    /// Endpoints (`premiumIndexKlines`) answered 404, as an exchange that does not serve them.
    #[serde(default)]
    pub unserved: Vec<String>,
    /// Path prefixes served; `/fapi/v1` and `/fapi/v3` by default.
    #[serde(default = "default_prefixes")]
    pub path_prefixes: Vec<String>,
    /// Where relative paths in the scenario resolve (the project root); set by `parse`.
    #[serde(skip)]
    pub base_dir: PathBuf,
    #[serde(skip)]
    pub now_ms: Option<u64>,
}

fn default_seed() -> u64 {
    42
}

fn default_prefixes() -> Vec<String> {
    vec!["/fapi/v1".into(), "/fapi/v3".into()]
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSpec {
    #[serde(default)]
    pub now: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    #[serde(default = "default_weight_limit")]
    pub request_weight: WeightLimit,
    #[serde(default = "yes")]
    pub retry_after: bool,
    #[serde(default = "default_ban_after")]
    pub ban_after: u64,
    #[serde(default = "default_ban_for")]
    pub ban_for: String,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            request_weight: default_weight_limit(),
            retry_after: true,
            ban_after: default_ban_after(),
            ban_for: default_ban_for(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_ban_after() -> u64 {
    16
}

fn default_ban_for() -> String {
    "2m".into()
}

fn default_weight_limit() -> WeightLimit {
    WeightLimit {
        interval: "MINUTE".into(),
        interval_num: 1,
        limit: 2400,
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightLimit {
    pub interval: String,
    pub interval_num: u64,
    pub limit: u64,
}

impl WeightLimit {
    pub fn as_rate_limit(&self) -> RateLimit {
        RateLimit {
            rate_limit_type: "REQUEST_WEIGHT".into(),
            interval: self.interval.clone(),
            interval_num: self.interval_num,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketSpec {
    #[serde(default)]
    pub simulate: Option<SimulateSpec>,
    #[serde(default)]
    pub files: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulateSpec {
    #[serde(default = "default_genesis")]
    pub genesis: String,
    #[serde(default = "default_base_interval")]
    pub base_interval: Interval,
    #[serde(default = "default_quote")]
    pub quote: String,
    /// Annualised volatility of the market factor the leader follows.
    #[serde(default = "default_market_vol")]
    pub market_vol: f64,
    #[serde(default)]
    pub assets: Vec<AssetSpec>,
    #[serde(default)]
    pub generated: Option<GeneratedSpec>,
    /// Volatility regimes (calm and stormy spells of the market factor). Off, volatility is
    /// constant: with equal assets, the null market, where nothing about the future is
    /// predictable from the past.
    #[serde(default = "yes")]
    pub regimes: bool,
    /// A planted effect: every other asset's log return in bar k gains `beta` times the
    /// leader's log return in bar k-1.
    #[serde(default)]
    pub lead_lag: Option<LeadLagSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadLagSpec {
    /// The leader's base asset (`BTC`), one of `assets`.
    pub leader: String,
    pub beta: f64,
}

fn default_genesis() -> String {
    "2023-01-01".into()
}
fn default_base_interval() -> Interval {
    Interval::parse("1h").expect("1h is an interval")
}
fn default_quote() -> String {
    "USDT".into()
}
fn default_market_vol() -> f64 {
    0.6
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetSpec {
    pub base: String,
    pub price: f64,
    #[serde(default = "one")]
    pub beta: f64,
    /// Annualised idiosyncratic volatility.
    #[serde(default = "default_vol")]
    pub vol: f64,
    #[serde(default)]
    pub listed: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    /// Mean quote volume per base bar.
    #[serde(default)]
    pub volume: Option<f64>,
}

fn one() -> f64 {
    1.0
}
fn default_vol() -> f64 {
    0.5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratedSpec {
    pub count: usize,
    /// Listings spread over this many days after genesis (0: all listed at genesis).
    #[serde(default)]
    pub listed_within_days: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default)]
    pub truncate_rate: f64,
    #[serde(default)]
    pub latency: Option<String>,
    #[serde(default)]
    pub rate_limit_every: Option<u64>,
    #[serde(default)]
    pub hostile_symbols: bool,
    #[serde(default)]
    pub ban_after_requests: Option<u64>,
}

/// A date (`2024-01-01`) or an RFC 3339 time, as epoch ms.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    humantime::parse_rfc3339_weak(full.trim_end_matches('Z'))
        .map_err(|error| {
            format!("invalid time `{text}`: {error}; use 2024-01-01 or 2024-01-01T00:00:00Z")
        })
        .map(|time| {
            time.duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_millis() as u64)
                .unwrap_or(0)
        })
}

impl Scenario {
    /// Parses and checks a scenario file; relative paths in it resolve against the project root
    /// (two levels above `data/scenarios/`, or the current directory).
    pub fn parse(file: &Path, text: &str) -> Result<Self, Box<Diagnostic>> {
        let mut scenario: Scenario = parse_yaml_file(file, text)?;
        let index = LocationIndex::build(text).map_err(|(position, message)| {
            Box::new(Diagnostic::at(file, text, Some(position), 1, message))
        })?;
        let fail = |path: YamlPath, message: String| {
            Box::new(Diagnostic::at_path(
                file,
                text,
                &index,
                &path,
                Anchor::Value,
                message,
            ))
        };
        scenario.base_dir = project_root_of(file);
        if let Some(now) = &scenario.clock.now {
            scenario.now_ms =
                Some(parse_time(now).map_err(|m| fail(YamlPath::of(&["clock", "now"]), m))?);
        }
        let limit = &scenario.limits.request_weight;
        if limit.as_rate_limit().window_ms().is_none() || limit.limit == 0 {
            return Err(fail(
                YamlPath::of(&["limits", "request_weight"]),
                "the weight limit needs interval SECOND, MINUTE, HOUR or DAY and a limit above 0"
                    .into(),
            ));
        }
        crate::util::time::parse_duration(&scenario.limits.ban_for)
            .map_err(|m| fail(YamlPath::of(&["limits", "ban_for"]), m))?;
        if let Some(latency) = &scenario.faults.latency {
            crate::util::time::parse_duration(latency)
                .map_err(|m| fail(YamlPath::of(&["faults", "latency"]), m))?;
        }
        for (name, rate) in [
            ("error_rate", scenario.faults.error_rate),
            ("truncate_rate", scenario.faults.truncate_rate),
        ] {
            if !(0.0..1.0).contains(&rate) {
                return Err(fail(
                    YamlPath::of(&["faults", name]),
                    format!("`{name}` is a share in [0, 1): got {rate}"),
                ));
            }
        }
        match (&scenario.market.simulate, &scenario.market.files) {
            (Some(simulate), None) => {
                parse_time(&simulate.genesis)
                    .map_err(|m| fail(YamlPath::of(&["market", "simulate", "genesis"]), m))?;
                if simulate.assets.is_empty() && simulate.generated.is_none() {
                    return Err(fail(
                        YamlPath::of(&["market", "simulate"]),
                        "the simulated market has no assets".into(),
                    ));
                }
                for (position, asset) in simulate.assets.iter().enumerate() {
                    let at = YamlPath::of(&["market", "simulate", "assets"]).index(position);
                    if asset.price.is_nan()
                        || asset.price <= 0.0
                        || asset.vol.is_nan()
                        || asset.vol < 0.0
                    {
                        return Err(fail(at, "an asset needs price > 0 and vol >= 0".into()));
                    }
                    if let Some(listed) = &asset.listed {
                        parse_time(listed).map_err(|m| fail(at.clone().key("listed"), m))?;
                    }
                }
                if let Some(lead_lag) = &simulate.lead_lag {
                    let at = YamlPath::of(&["market", "simulate", "lead_lag"]);
                    if !simulate.assets.iter().any(|a| a.base == lead_lag.leader) {
                        let bases: Vec<&str> =
                            simulate.assets.iter().map(|a| a.base.as_str()).collect();
                        return Err(fail(
                            at.key("leader"),
                            format!(
                                "the leader `{}` is not one of the assets ({})",
                                lead_lag.leader,
                                bases.join(", ")
                            ),
                        ));
                    }
                    if !lead_lag.beta.is_finite() {
                        return Err(fail(at.key("beta"), "`beta` must be a number".into()));
                    }
                }
            }
            (None, Some(_)) => {}
            _ => {
                return Err(fail(
                    YamlPath::of(&["market"]),
                    "give exactly one of `market.simulate` or `market.files`".into(),
                ));
            }
        }
        Ok(scenario)
    }

    /// Reads and parses a scenario file.
    pub fn load(file: &Path) -> Result<Self, String> {
        let text = fs_err::read_to_string(file).map_err(|error| error.to_string())?;
        Self::parse(file, &text).map_err(|diagnostic| diagnostic.to_string())
    }

    pub fn ban_for(&self) -> Duration {
        crate::util::time::parse_duration(&self.limits.ban_for).unwrap_or(Duration::from_secs(120))
    }

    pub fn latency(&self) -> Option<Duration> {
        self.faults
            .latency
            .as_deref()
            .and_then(|text| crate::util::time::parse_duration(text).ok())
    }
}

/// `<root>/data/scenarios/x.yaml` -> `<root>`; otherwise the file's directory.
fn project_root_of(file: &Path) -> PathBuf {
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    let dir = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("data/scenarios") {
        dir.parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or(dir)
    } else {
        dir
    }
}

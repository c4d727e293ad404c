//! The markets a replay exchange serves: a seeded simulator, or recorded kline files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use crate::market::model::{DEFAULT_FUNDING_HOURS, Dataset, Funding, Interval, Kline};
use crate::util::rng::{Rng, key, mix};

use super::scenario::{Scenario, SimulateSpec, parse_time};

/// A symbol as `exchangeInfo` lists it.
#[derive(Debug, Clone)]
pub struct MarketSymbol {
    pub symbol: String,
    pub base: String,
    pub quote: String,
    pub status: String,
    pub onboard_ms: u64,
    pub price_decimals: u32,
    pub quantity_decimals: u32,
}

#[derive(Debug)]
pub enum Market {
    Simulated(Box<SimMarket>),
    Recorded(RecordedMarket),
}

/// Why a klines request cannot be served.
#[derive(Debug)]
pub enum MarketError {
    UnknownSymbol,
    UnsupportedInterval(String),
}

/// A symbol's funding schedule as `fundingInfo` states it.
#[derive(Debug, Clone, PartialEq)]
pub struct FundingSchedule {
    pub symbol: String,
    pub interval_hours: i64,
    /// The cap and floor of the rate (floor = -cap), when known.
    pub cap: Option<f64>,
}

impl Market {
    pub fn build(scenario: &Scenario) -> Result<Self, String> {
        match (&scenario.market.simulate, &scenario.market.files) {
            (Some(spec), _) => Ok(Market::Simulated(Box::new(SimMarket::new(
                spec,
                scenario.seed,
            )?))),
            (None, Some(dir)) => {
                RecordedMarket::load(&scenario.base_dir.join(dir)).map(Market::Recorded)
            }
            (None, None) => Err("the scenario has no market".into()),
        }
    }

    /// `simulated` or `recorded`: what the data is, sent with every response.
    pub fn provenance(&self) -> &'static str {
        match self {
            Market::Simulated(_) => "simulated",
            Market::Recorded(_) => "recorded",
        }
    }

    pub fn symbols(&self) -> &[MarketSymbol] {
        match self {
            Market::Simulated(market) => &market.symbols,
            Market::Recorded(market) => &market.symbols,
        }
    }

    fn index_of(&self, symbol: &str) -> Option<usize> {
        self.symbols().iter().position(|s| s.symbol == symbol)
    }

    /// Candles opening in `[start, end]` (Binance semantics: with a start, the first `limit`
    /// from it; without, the last `limit` up to `end` or now). Only candles opened by `now`; the
    /// newest may still be open.
    pub fn klines(
        &self,
        symbol: &str,
        interval: Interval,
        start: Option<u64>,
        end: Option<u64>,
        limit: usize,
        now: u64,
    ) -> Result<Vec<Kline>, MarketError> {
        self.kline_table(Dataset::Klines, symbol, interval, start, end, limit, now)
    }

    /// Bars of a kline-shaped table (trades, mark, index or premium), as [`Market::klines`].
    #[allow(clippy::too_many_arguments)]
    pub fn kline_table(
        &self,
        dataset: Dataset,
        symbol: &str,
        interval: Interval,
        start: Option<u64>,
        end: Option<u64>,
        limit: usize,
        now: u64,
    ) -> Result<Vec<Kline>, MarketError> {
        let index = self.index_of(symbol).ok_or(MarketError::UnknownSymbol)?;
        match self {
            Market::Simulated(market) => {
                market.klines(dataset, index, interval, start, end, limit, now)
            }
            Market::Recorded(market) => {
                market.klines(dataset, index, interval, start, end, limit, now)
            }
        }
    }

    /// Settled funding rates timed in `[start, end]`, at or before `now` (with a start, the
    /// first `limit` from it; without, the last `limit`).
    pub fn funding(
        &self,
        symbol: &str,
        start: Option<u64>,
        end: Option<u64>,
        limit: usize,
        now: u64,
    ) -> Result<Vec<Funding>, MarketError> {
        let index = self.index_of(symbol).ok_or(MarketError::UnknownSymbol)?;
        let end = end.unwrap_or(u64::MAX).min(now) as i64;
        let rows = match self {
            Market::Simulated(market) => market.funding(index, start, end),
            Market::Recorded(market) => market.funding.get(&index).cloned().unwrap_or_default(),
        };
        let rows: Vec<Funding> = rows
            .into_iter()
            .filter(|row| {
                row.funding_time <= end
                    && start.is_none_or(|start| row.funding_time >= start as i64)
            })
            .collect();
        Ok(match start {
            Some(_) => rows.into_iter().take(limit).collect(),
            None => rows[rows.len().saturating_sub(limit)..].to_vec(),
        })
    }

    /// Every symbol's funding schedule.
    pub fn funding_schedules(&self) -> Vec<FundingSchedule> {
        self.symbols()
            .iter()
            .enumerate()
            .map(|(index, symbol)| {
                let (interval_hours, cap) = match self {
                    Market::Simulated(market) => {
                        let (hours, cap) = market.schedule(index);
                        (hours, Some(cap))
                    }
                    Market::Recorded(market) => (
                        market
                            .funding
                            .get(&index)
                            .and_then(|rows| rows.last())
                            .map_or(DEFAULT_FUNDING_HOURS, |row| row.interval_hours),
                        None,
                    ),
                };
                FundingSchedule {
                    symbol: symbol.symbol.clone(),
                    interval_hours,
                    cap,
                }
            })
            .collect()
    }

    /// Quote volume of the last 24 hours of closed base bars.
    pub fn quote_volume_24h(&self, symbol: &str, now: u64) -> f64 {
        let hour = Interval::parse("1h").expect("1h");
        let start = hour.floor(now).saturating_sub(24 * 3_600_000);
        let Ok(interval) = self.finest_interval(symbol) else {
            return 0.0;
        };
        self.klines(symbol, interval, Some(start), Some(now), 5000, now)
            .map(|bars| bars.iter().map(|bar| bar.quote_volume).sum())
            .unwrap_or(0.0)
    }

    fn finest_interval(&self, symbol: &str) -> Result<Interval, MarketError> {
        match self {
            Market::Simulated(market) => Ok(market.base),
            Market::Recorded(market) => {
                let index = self.index_of(symbol).ok_or(MarketError::UnknownSymbol)?;
                market
                    .series
                    .keys()
                    .filter(|(i, dataset, _)| *i == index && *dataset == Dataset::Klines)
                    .map(|(_, _, interval)| Interval::parse(interval).expect("checked at load"))
                    .min_by_key(|interval| interval.millis())
                    .ok_or(MarketError::UnknownSymbol)
            }
        }
    }

    /// How many closed candles open in `[from, to]` (for benchmark bounds).
    pub fn closed_bars(
        &self,
        symbol: &str,
        interval: Interval,
        from: u64,
        to: u64,
        now: u64,
    ) -> u64 {
        let mut count = 0;
        let mut cursor = from;
        loop {
            let Ok(page) = self.klines(symbol, interval, Some(cursor), Some(to), 1500, now) else {
                return count;
            };
            let closed = page
                .iter()
                .filter(|bar| bar.close_time < now as i64)
                .count();
            count += closed as u64;
            match page.last() {
                Some(last) if page.len() == 1500 => {
                    cursor = last.open_time as u64 + interval.millis()
                }
                _ => return count,
            }
        }
    }
}

/// One base bar of a simulated asset, before rounding.
#[derive(Debug, Clone, Copy)]
struct RawBar {
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: f64,
    quote_volume: f64,
    trades: i64,
    taker_buy_base: f64,
    /// The premium of the contract over its index at the bar's open and close: a persistent
    /// process nudged by returns (crowded longs pay), which funding follows.
    premium_open: f64,
    premium: f64,
    /// The mark price's relative deviation from the last price.
    mark: f64,
}

/// Per base bar: the premium keeps this share of its distance from its mean (longs usually
/// pay: +0.01%), gains this share of the bar's log return, and this much noise (a stationary
/// spread of about 0.04% on hourly bars).
const PREMIUM_PERSISTENCE: f64 = 0.98;
const PREMIUM_MEAN: f64 = 0.0001;
const PREMIUM_FROM_RETURN: f64 = 0.01;
const PREMIUM_NOISE: f64 = 0.00005;
const MARK_NOISE: f64 = 0.0002;
/// Binance's interest rate component: 0.01% per 8 hours, and the clamp around it.
const FUNDING_INTEREST_8H: f64 = 0.0001;
const FUNDING_CLAMP: f64 = 0.0005;

#[derive(Debug)]
struct SimAsset {
    key: u64,
    price: f64,
    beta: f64,
    /// Idiosyncratic volatility per base bar.
    vol: f64,
    /// Base-bar index (from genesis) of the listing.
    listed: u64,
    volume: f64,
}

/// Correlated assets: a market factor with volatility regimes (unless `regimes: false`); each
/// asset is `beta * factor` plus its own noise, plus, with `lead_lag`, a share of the leader's
/// previous return; volume rises with absolute returns. Bar `k` of an asset depends only on
/// the seed, the asset and `k`'s history, so the same scenario serves the same market forever.
#[derive(Debug)]
pub struct SimMarket {
    seed: u64,
    genesis: u64,
    base: Interval,
    market_vol: f64,
    regimes: bool,
    /// The planted effect: (leader's index, beta on its previous log return).
    lead_lag: Option<(usize, f64)>,
    symbols: Vec<MarketSymbol>,
    assets: Vec<SimAsset>,
    /// Per base bar from genesis: (factor return, regime multiplier).
    factor: Mutex<Vec<(f64, f64)>>,
    series: Vec<Mutex<Vec<RawBar>>>,
}

const REGIME_SWITCH: f64 = 1.0 / 400.0;
const HIGH_REGIME: f64 = 2.2;

impl SimMarket {
    fn new(spec: &SimulateSpec, seed: u64) -> Result<Self, String> {
        let genesis = spec.base_interval.ceil(parse_time(&spec.genesis)?);
        let base = spec.base_interval;
        let per_year = (365.0 * 86_400_000.0) / base.millis() as f64;
        let mut symbols = Vec::new();
        let mut assets = Vec::new();
        let mut add = |base_asset: String,
                       price: f64,
                       beta: f64,
                       vol: f64,
                       listed: u64,
                       status: String,
                       volume: f64| {
            let symbol = format!("{base_asset}{}", spec.quote);
            let magnitude = price.log10().floor() as i32;
            symbols.push(MarketSymbol {
                symbol: symbol.clone(),
                base: base_asset,
                quote: spec.quote.clone(),
                status,
                onboard_ms: listed,
                price_decimals: (5 - magnitude).clamp(1, 8) as u32,
                quantity_decimals: 3,
            });
            assets.push(SimAsset {
                key: key(&symbol),
                price,
                beta,
                vol: vol / per_year.sqrt(),
                listed: base.ceil(listed.max(genesis)).saturating_sub(genesis) / base.millis(),
                volume,
            });
        };
        for asset in &spec.assets {
            let listed = match &asset.listed {
                Some(text) => parse_time(text)?,
                None => genesis,
            };
            add(
                asset.base.clone(),
                asset.price,
                asset.beta,
                asset.vol,
                listed.max(genesis),
                asset.status.clone().unwrap_or_else(|| "TRADING".into()),
                asset.volume.unwrap_or(2_000_000.0),
            );
        }
        if let Some(generated) = &spec.generated {
            let mut rng = Rng::new(mix(seed ^ 0xA17));
            for number in 1..=generated.count {
                let price = 10f64.powf(rng.uniform() * 5.0 - 2.0);
                let beta = 0.6 + rng.uniform() * 1.2;
                let vol = 0.3 + rng.uniform() * 0.9;
                let days = if generated.listed_within_days == 0 {
                    0
                } else {
                    (rng.uniform() * generated.listed_within_days as f64) as u64
                };
                let volume = 10f64.powf(4.5 + rng.uniform() * 2.0);
                add(
                    format!("ALT{number:03}"),
                    price,
                    beta,
                    vol,
                    genesis + days * 86_400_000,
                    "TRADING".into(),
                    volume,
                );
            }
        }
        let series = assets.iter().map(|_| Mutex::new(Vec::new())).collect();
        let lead_lag = match &spec.lead_lag {
            Some(lead_lag) => {
                let leader = symbols
                    .iter()
                    .position(|s| s.base == lead_lag.leader)
                    .ok_or_else(|| format!("the leader `{}` is not an asset", lead_lag.leader))?;
                Some((leader, lead_lag.beta))
            }
            None => None,
        };
        Ok(Self {
            seed,
            genesis,
            base,
            market_vol: spec.market_vol / per_year.sqrt(),
            regimes: spec.regimes,
            lead_lag,
            symbols,
            assets,
            factor: Mutex::new(Vec::new()),
            series,
        })
    }

    /// The factor returns and regimes up to base bar `upto` (inclusive).
    fn factor_upto(&self, upto: u64) -> Vec<(f64, f64)> {
        let mut factor = self.factor.lock().unwrap_or_else(|e| e.into_inner());
        while factor.len() as u64 <= upto {
            let k = factor.len() as u64;
            let mut rng = Rng::new(mix(self.seed ^ 0xFAC7) ^ mix(k));
            let previous = factor.last().map(|&(_, regime)| regime).unwrap_or(1.0);
            let switch = rng.uniform() < REGIME_SWITCH;
            let regime = if !self.regimes {
                1.0
            } else if switch {
                if previous > 1.0 { 1.0 } else { HIGH_REGIME }
            } else {
                previous
            };
            factor.push((self.market_vol * regime * rng.normal(), regime));
        }
        factor[..=upto as usize].to_vec()
    }

    /// Raw bars of asset `index` for base-bar indices `[from, to]` (from genesis), clipped to
    /// its listing.
    fn base_bars(&self, index: usize, from: u64, to: u64) -> Vec<(u64, RawBar)> {
        let asset = &self.assets[index];
        let from = from.max(asset.listed);
        if to < from {
            return Vec::new();
        }
        let mut series = self.series[index].lock().unwrap_or_else(|e| e.into_inner());
        let needed = (to - asset.listed + 1) as usize;
        // The leader's log return of each base bar, for a planted lead-lag effect (the leader
        // itself never follows, so this takes no lock that is held here).
        let lagged = match self.lead_lag {
            Some((leader, beta)) if leader != index && series.len() < needed => {
                // Only the bars the new ones follow: k - 1 for each k still to simulate.
                let from = (asset.listed + series.len() as u64).saturating_sub(1);
                let bars = self.base_bars(leader, from, to);
                let first = bars
                    .first()
                    .map(|(time, _)| (time - self.genesis) / self.base.millis());
                Some((bars, first.unwrap_or(u64::MAX), beta))
            }
            _ => None,
        };
        let leader_return = |k: u64| -> f64 {
            match &lagged {
                Some((bars, first, beta)) if k > *first => {
                    let bar = &bars[(k - 1 - first) as usize].1;
                    beta * (bar.close / bar.open).ln()
                }
                _ => 0.0,
            }
        };
        if series.len() < needed {
            let factor = self.factor_upto(to);
            while series.len() < needed {
                let k = asset.listed + series.len() as u64;
                let (market, regime) = factor[k as usize];
                let mut rng = Rng::new(mix(self.seed ^ asset.key) ^ mix(k.wrapping_mul(0x9E37)));
                let open = series.last().map(|bar| bar.close).unwrap_or(asset.price);
                let sigma = (asset.vol * regime).max(1e-9);
                let ret = asset.beta * market + sigma * rng.normal() + leader_return(k);
                let close = open * ret.exp();
                let wick = sigma * 0.6;
                let high = open.max(close) * (wick * rng.normal().abs()).exp();
                let low = open.min(close) * (-wick * rng.normal().abs()).exp();
                let scale = self.market_vol.hypot(asset.vol).max(1e-9);
                let activity = (0.4 + ret.abs() / scale) * (0.35 * rng.normal()).exp();
                let quote_volume = asset.volume * activity * regime;
                let vwap = (high + low + close) / 3.0;
                let volume = quote_volume / vwap;
                let taker_share = (0.5 + 0.15 * (ret / scale).tanh()).clamp(0.05, 0.95);
                // Drawn after the price's own draws, so adding them changed no price.
                let premium_open = series.last().map(|bar| bar.premium).unwrap_or(PREMIUM_MEAN);
                let premium = (PREMIUM_MEAN
                    + PREMIUM_PERSISTENCE * (premium_open - PREMIUM_MEAN)
                    + PREMIUM_FROM_RETURN * ret
                    + PREMIUM_NOISE * rng.normal())
                .clamp(-0.03, 0.03);
                let mark = MARK_NOISE * rng.normal();
                series.push(RawBar {
                    open,
                    high,
                    low,
                    close,
                    volume,
                    quote_volume,
                    trades: (quote_volume / 800.0).round() as i64 + 1,
                    taker_buy_base: volume * taker_share,
                    premium_open,
                    premium,
                    mark,
                });
            }
        }
        (from..=to)
            .map(|k| {
                (
                    self.genesis + k * self.base.millis(),
                    series[(k - asset.listed) as usize],
                )
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn klines(
        &self,
        dataset: Dataset,
        index: usize,
        interval: Interval,
        start: Option<u64>,
        end: Option<u64>,
        limit: usize,
        now: u64,
    ) -> Result<Vec<Kline>, MarketError> {
        if !interval.millis().is_multiple_of(self.base.millis()) {
            return Err(MarketError::UnsupportedInterval(format!(
                "this scenario simulates {} bars; ask for {} or a multiple of it",
                self.base, self.base
            )));
        }
        let asset = &self.assets[index];
        let listed_ms = self.genesis + asset.listed * self.base.millis();
        if now < listed_ms {
            return Ok(Vec::new());
        }
        let first = interval.floor(listed_ms);
        let last = interval
            .floor(now)
            .min(end.map(|e| interval.floor(e)).unwrap_or(u64::MAX));
        let step = interval.millis();
        let (lo, hi) = match start {
            Some(start) => {
                let lo = interval.ceil(start).max(first);
                (
                    lo,
                    last.min(lo.saturating_add(step.saturating_mul(limit as u64 - 1))),
                )
            }
            None => (
                last.saturating_sub(step * (limit as u64 - 1)).max(first),
                last,
            ),
        };
        if hi < lo {
            return Ok(Vec::new());
        }
        let now_index = (now - self.genesis) / self.base.millis();
        let base_from = lo.saturating_sub(self.genesis) / self.base.millis();
        let base_to =
            ((hi + step - 1).saturating_sub(self.genesis) / self.base.millis()).min(now_index);
        let bars = self.base_bars(index, base_from, base_to);
        let symbol = &self.symbols[index];
        let mut out: Vec<Kline> = Vec::new();
        let mut current: Option<(u64, RawBar)> = None;
        let decimals = if dataset.is_price() {
            symbol.price_decimals
        } else {
            8
        };
        let flush = |out: &mut Vec<Kline>, (open_time, bar): (u64, RawBar)| {
            out.push(round_bar(open_time, step, bar, symbol, decimals));
        };
        let base_ms = self.base.millis();
        for (open_ms, bar) in bars {
            // The bar still forming shows only what has happened so far.
            let bar = if open_ms + base_ms > now {
                partial(bar, (now - open_ms) as f64 / base_ms as f64)
            } else {
                bar
            };
            let bar = derive(dataset, bar);
            let bucket = interval.floor(open_ms);
            if bucket < lo || bucket > hi {
                continue;
            }
            match &mut current {
                Some((open, acc)) if *open == bucket => {
                    acc.high = acc.high.max(bar.high);
                    acc.low = acc.low.min(bar.low);
                    acc.close = bar.close;
                    acc.volume += bar.volume;
                    acc.quote_volume += bar.quote_volume;
                    acc.trades += bar.trades;
                    acc.taker_buy_base += bar.taker_buy_base;
                }
                _ => {
                    if let Some(done) = current.take() {
                        flush(&mut out, done);
                    }
                    current = Some((bucket, bar));
                }
            }
        }
        if let Some(done) = current {
            flush(&mut out, done);
        }
        Ok(out)
    }
}

impl SimMarket {
    /// An asset's funding interval in hours and its rate cap (the floor is its negative):
    /// every third asset by name settles every 4 hours, the others every 8.
    fn schedule(&self, index: usize) -> (i64, f64) {
        if self.assets[index].key.is_multiple_of(3) {
            (4, 0.01)
        } else {
            (8, 0.02)
        }
    }

    /// Every rate settled in `[start, end]` (ms): at each multiple of the interval after the
    /// listing (a few ms late, as real settlements run), the mean premium over the interval
    /// plus the interest component clamped to +-0.05%, within the cap and floor.
    fn funding(&self, index: usize, start: Option<u64>, end: i64) -> Vec<Funding> {
        let (hours, cap) = self.schedule(index);
        let every = hours as u64 * 3_600_000;
        let asset = &self.assets[index];
        let listed_ms = self.genesis + asset.listed * self.base.millis();
        let base_ms = self.base.millis();
        let first = (listed_ms / every + 1) * every;
        let from = start.map_or(first, |start| {
            first.max(start.saturating_sub(1000) / every * every)
        });
        if end < 0 || (end as u64) < from {
            return Vec::new();
        }
        let last = end as u64 / every * every;
        // The base bars the settlements in [from, last] average over.
        let bar_of = |ms: u64| ms.saturating_sub(self.genesis) / base_ms;
        let bars = self.base_bars(
            index,
            bar_of(from.saturating_sub(every)),
            bar_of(last).saturating_sub(1),
        );
        let interest = FUNDING_INTEREST_8H * hours as f64 / 8.0;
        let mut out = Vec::new();
        let mut settle = from.max(first);
        while settle <= last {
            let window = settle - every..settle;
            let (sum, count) = bars
                .iter()
                .filter(|(open, _)| window.contains(open))
                .fold((0.0, 0usize), |(sum, count), (_, bar)| {
                    (sum + bar.premium, count + 1)
                });
            if count > 0 {
                let premium = sum / count as f64;
                let rate = (premium + (interest - premium).clamp(-FUNDING_CLAMP, FUNDING_CLAMP))
                    .clamp(-cap, cap);
                let late = mix(self.seed ^ asset.key ^ settle) % 13;
                out.push(Funding {
                    funding_time: (settle + late) as i64,
                    funding_rate: round_to(rate, 8),
                    interval_hours: hours,
                    rate_cap: Some(cap),
                    rate_floor: Some(-cap),
                });
            }
            settle += every;
        }
        out.retain(|row| row.funding_time <= end);
        out
    }
}

/// A trades bar as another kline-shaped table shows it: the mark price a small noisy spread
/// from the last price, the index the last price without its premium, the premium index the
/// premium itself; volume fields zero for all three.
fn derive(dataset: Dataset, bar: RawBar) -> RawBar {
    let scaled = |scale: f64| RawBar {
        open: bar.open * scale,
        high: bar.high * scale,
        low: bar.low * scale,
        close: bar.close * scale,
        volume: 0.0,
        quote_volume: 0.0,
        trades: 0,
        taker_buy_base: 0.0,
        ..bar
    };
    match dataset {
        Dataset::Klines | Dataset::Funding => bar,
        Dataset::MarkKlines => scaled(1.0 + bar.mark),
        Dataset::IndexKlines => scaled(1.0 / (1.0 + bar.premium)),
        Dataset::PremiumKlines => {
            let wick = bar.mark.abs() * 0.5;
            RawBar {
                open: bar.premium_open,
                high: bar.premium_open.max(bar.premium) + wick,
                low: bar.premium_open.min(bar.premium) - wick,
                close: bar.premium,
                ..scaled(1.0)
            }
        }
    }
}

/// The first `fraction` of a bar: its path interpolated, its volume pro rata.
fn partial(bar: RawBar, fraction: f64) -> RawBar {
    let fraction = fraction.clamp(0.0, 1.0);
    let close = bar.open + (bar.close - bar.open) * fraction;
    let body_high = bar.open.max(bar.close);
    let body_low = bar.open.min(bar.close);
    RawBar {
        open: bar.open,
        high: bar.open.max(close) + (bar.high - body_high) * fraction,
        low: bar.open.min(close) - (body_low - bar.low) * fraction,
        close,
        volume: bar.volume * fraction,
        quote_volume: bar.quote_volume * fraction,
        trades: (bar.trades as f64 * fraction).round() as i64,
        taker_buy_base: bar.taker_buy_base * fraction,
        ..bar
    }
}

fn round_to(value: f64, decimals: u32) -> f64 {
    let scale = 10f64.powi(decimals as i32);
    (value * scale).round() / scale
}

fn round_bar(
    open_time: u64,
    step: u64,
    bar: RawBar,
    symbol: &MarketSymbol,
    decimals: u32,
) -> Kline {
    let price = |value: f64| round_to(value, decimals);
    let quantity = |value: f64| round_to(value, symbol.quantity_decimals);
    let volume = quantity(bar.volume);
    let taker = quantity(bar.taker_buy_base).min(volume);
    let vwap = if bar.volume > 0.0 {
        bar.quote_volume / bar.volume
    } else {
        bar.close
    };
    Kline {
        open_time: open_time as i64,
        open: price(bar.open),
        high: price(bar.high),
        low: price(bar.low),
        close: price(bar.close),
        volume,
        close_time: (open_time + step - 1) as i64,
        quote_volume: round_to(bar.quote_volume, 4),
        trades: bar.trades,
        taker_buy_base: taker,
        taker_buy_quote: round_to(taker * vwap, 4),
    }
}

/// Recorded klines: `SYMBOL-INTERVAL-*.csv` (Binance dump format) or `.parquet` (lake format)
/// files under a directory, served as they are; mark, index and premium klines from the same
/// files under `markPriceKlines/`, `indexPriceKlines/`, `premiumIndexKlines/`; funding from
/// `SYMBOL-fundingRate-*.csv` files beside them.
#[derive(Debug)]
pub struct RecordedMarket {
    symbols: Vec<MarketSymbol>,
    series: BTreeMap<(usize, Dataset, String), Vec<Kline>>,
    funding: BTreeMap<usize, Vec<Funding>>,
}

impl RecordedMarket {
    fn load(dir: &Path) -> Result<Self, String> {
        let files = crate::market::exchange::dump::find_kline_files(dir)?;
        if files.is_empty() {
            return Err(format!(
                "no SYMBOL-INTERVAL-*.csv or .parquet kline files under {}",
                dir.display()
            ));
        }
        let mut by_key: BTreeMap<(String, Dataset, String), Vec<Kline>> = BTreeMap::new();
        let mut funding_by_symbol: BTreeMap<String, Vec<Funding>> = BTreeMap::new();
        for file in files {
            match file.interval {
                Some(interval) => {
                    let rows = crate::market::exchange::dump::read_kline_file(&file.path)?;
                    by_key
                        .entry((file.symbol, file.dataset, interval.name().to_owned()))
                        .or_default()
                        .extend(rows);
                }
                None => {
                    let rows = crate::market::exchange::dump::read_funding_file(&file.path)?;
                    funding_by_symbol
                        .entry(file.symbol)
                        .or_default()
                        .extend(rows);
                }
            }
        }
        let mut symbols: Vec<MarketSymbol> = Vec::new();
        let mut series = BTreeMap::new();
        let index_of = |symbols: &mut Vec<MarketSymbol>, symbol: &str| match symbols
            .iter()
            .position(|s| s.symbol == symbol)
        {
            Some(index) => index,
            None => {
                // The quote asset as the exchange would state it; a symbol that ends with none
                // of the known ones has none (and `discover` selects it only by name).
                let (base, quote) =
                    crate::market::model::split_symbol(symbol).unwrap_or((symbol, ""));
                symbols.push(MarketSymbol {
                    base: base.to_owned(),
                    quote: quote.to_owned(),
                    symbol: symbol.to_owned(),
                    status: "TRADING".into(),
                    onboard_ms: u64::MAX,
                    price_decimals: 8,
                    quantity_decimals: 8,
                });
                symbols.len() - 1
            }
        };
        for ((symbol, dataset, interval), mut rows) in by_key {
            rows.sort_by_key(|row| row.open_time);
            rows.dedup_by_key(|row| row.open_time);
            let index = index_of(&mut symbols, &symbol);
            if dataset == Dataset::Klines
                && let Some(first) = rows.first()
            {
                let onboard = &mut symbols[index].onboard_ms;
                *onboard = (*onboard).min(first.open_time.max(0) as u64);
            }
            series.insert((index, dataset, interval), rows);
        }
        let mut funding = BTreeMap::new();
        for (symbol, mut rows) in funding_by_symbol {
            rows.sort_by_key(|row| row.funding_time);
            rows.dedup_by_key(|row| row.funding_time);
            funding.insert(index_of(&mut symbols, &symbol), rows);
        }
        Ok(Self {
            symbols,
            series,
            funding,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn klines(
        &self,
        dataset: Dataset,
        index: usize,
        interval: Interval,
        start: Option<u64>,
        end: Option<u64>,
        limit: usize,
        now: u64,
    ) -> Result<Vec<Kline>, MarketError> {
        let Some(rows) = self
            .series
            .get(&(index, dataset, interval.name().to_owned()))
        else {
            return Err(MarketError::UnsupportedInterval(format!(
                "no recorded {interval} {dataset} for this symbol"
            )));
        };
        let end = end.unwrap_or(u64::MAX).min(now) as i64;
        let upto = rows.partition_point(|row| row.open_time <= end);
        let rows = &rows[..upto];
        Ok(match start {
            Some(start) => {
                let from = rows.partition_point(|row| row.open_time < start as i64);
                rows[from..].iter().take(limit).copied().collect()
            }
            None => rows[rows.len().saturating_sub(limit)..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn market(simulate: &str) -> SimMarket {
        let text = format!(
            "seed: 3\nmarket:\n  simulate:\n    genesis: 2024-01-01\n    market_vol: 0.8\n    assets:\n      - {{base: BTC, price: 40000, beta: 1.0, vol: 0.1}}\n      - {{base: SOL, price: 100, beta: 1.0, vol: 0.4}}\n{simulate}"
        );
        let scenario = Scenario::parse(Path::new("s.yaml"), &text).unwrap();
        SimMarket::new(scenario.market.simulate.as_ref().unwrap(), scenario.seed).unwrap()
    }

    fn log_returns(market: &SimMarket, index: usize, bars: u64) -> Vec<f64> {
        market
            .base_bars(index, 0, bars - 1)
            .iter()
            .map(|(_, bar)| (bar.close / bar.open).ln())
            .collect()
    }

    /// Least-squares slope of `y` on `x`.
    fn slope(x: &[f64], y: &[f64]) -> f64 {
        let n = x.len() as f64;
        let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
        let var: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
        cov / var
    }

    #[test]
    fn a_planted_lead_lag_effect_is_recovered_by_regression() {
        let planted = market("    lead_lag: {leader: BTC, beta: 0.5}\n");
        let bars = 20_000;
        let btc = log_returns(&planted, 0, bars);
        let sol = log_returns(&planted, 1, bars);
        let beta = slope(&btc[..bars as usize - 1], &sol[1..]);
        assert!((beta - 0.5).abs() < 0.05, "lagged beta {beta}");
        // Without the switch the same market has no lagged dependence.
        let plain = market("");
        let btc = log_returns(&plain, 0, bars);
        let sol = log_returns(&plain, 1, bars);
        let beta = slope(&btc[..bars as usize - 1], &sol[1..]);
        assert!(
            beta.abs() < 0.05,
            "lagged beta {beta} in a market without the effect"
        );
        // The leader itself is unchanged by the switch.
        assert_eq!(log_returns(&planted, 0, 100), log_returns(&plain, 0, 100));
    }

    #[test]
    fn without_regimes_volatility_does_not_cluster() {
        // Volatility clustering shows as autocorrelation of squared returns (10 bars apart).
        let clustering = |market: &SimMarket| {
            let squares: Vec<f64> = log_returns(market, 0, 40_000)
                .iter()
                .map(|r| r * r)
                .collect();
            let n = squares.len() - 10;
            let (x, y) = (&squares[..n], &squares[10..]);
            let (mx, my) = (
                x.iter().sum::<f64>() / n as f64,
                y.iter().sum::<f64>() / n as f64,
            );
            let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
            let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
            let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
            cov / (vx * vy).sqrt()
        };
        let null = clustering(&market("    regimes: false\n"));
        assert!(null.abs() < 0.03, "squared-return autocorrelation {null}");
        let regimes = clustering(&market(""));
        assert!(regimes > 0.05, "squared-return autocorrelation {regimes}");
    }

    #[test]
    fn a_leader_that_is_not_an_asset_is_located() {
        let text = "market:\n  simulate:\n    assets:\n      - {base: BTC, price: 1}\n    lead_lag: {leader: ETH, beta: 0.5}\n";
        let error = Scenario::parse(Path::new("s.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(error.contains("s.yaml:5:"), "{error}");
        assert!(
            error.contains("the leader `ETH` is not one of the assets (BTC)"),
            "{error}"
        );
    }
}

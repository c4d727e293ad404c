//! The HTTP side of the replay exchange (axum on 127.0.0.1).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::market::{Market, MarketError};
use super::scenario::Scenario;
use crate::market::exchange::client::PROVENANCE_HEADER;
use crate::market::model::{Dataset, Interval, MAX_FUNDING_PAGE, MAX_PAGE, RateLimit};
use crate::util::rng::Rng;

/// Counters a test or benchmark reads back (`GET /__replay/stats` serves them too).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayStats {
    pub requests: u64,
    pub weight: u64,
    pub rate_limited: u64,
    pub banned: u64,
    /// Requests that arrived while the client had been told to back off.
    pub violations: u64,
    pub injected_errors: u64,
    pub truncated: u64,
    /// Requests served by a kline-shaped endpoint (trades, mark, index, premium).
    pub klines_requests: u64,
    pub funding_requests: u64,
}

#[derive(Debug, Default)]
struct Window {
    index: u64,
    used: u64,
    limited_until: u64,
    episode_violations: u64,
    banned_until: u64,
}

#[derive(Debug)]
struct Exchange {
    scenario: Arc<Scenario>,
    market: Market,
    limit: RateLimit,
    window_ms: u64,
    header: String,
    started: Instant,
    anchor_ms: u64,
    window: Mutex<Window>,
    stats: Mutex<ReplayStats>,
    rng: Mutex<Rng>,
}

/// A running replay exchange; stops when dropped.
#[derive(Debug)]
pub struct ReplayExchange {
    pub url: String,
    exchange: Arc<Exchange>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ReplayExchange {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl ReplayExchange {
    /// Binds `addr` (port 0 for any free port) and serves `scenario` until dropped.
    pub async fn start(scenario: Arc<Scenario>, addr: SocketAddr) -> Result<Self, String> {
        let market = Market::build(&scenario)?;
        let limit = scenario.limits.request_weight.as_rate_limit();
        let window_ms = limit
            .window_ms()
            .ok_or("the weight limit has no known window")?;
        let exchange = Arc::new(Exchange {
            header: format!("x-mbx-used-weight-{}", limit.header_suffix().to_lowercase()),
            anchor_ms: scenario.now_ms.unwrap_or_else(crate::util::time::now_ms),
            rng: Mutex::new(Rng::new(scenario.seed ^ 0xFA17)),
            scenario,
            market,
            limit,
            window_ms,
            started: Instant::now(),
            window: Mutex::new(Window::default()),
            stats: Mutex::new(ReplayStats::default()),
        });
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| format!("cannot listen on {addr}: {error}"))?;
        let local = listener
            .local_addr()
            .map_err(|error| format!("cannot read the bound address: {error}"))?;
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&exchange));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(Self {
            url: format!("http://{local}"),
            exchange,
            shutdown,
            task: Some(task),
        })
    }

    pub fn stats(&self) -> ReplayStats {
        self.exchange
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn market(&self) -> &Market {
        &self.exchange.market
    }

    pub fn declared_limit(&self) -> &RateLimit {
        &self.exchange.limit
    }

    /// The exchange's clock.
    pub fn now_ms(&self) -> u64 {
        self.exchange.now_ms()
    }

    pub fn provenance(&self) -> &'static str {
        self.exchange.market.provenance()
    }
}

/// Symbols no well-behaved client may turn into a path or a query.
const HOSTILE_SYMBOLS: &[&str] = &[
    "../../../etc/passwd",
    "BTC/USDT",
    "X'; DROP TABLE klines;--",
    "EVIL USDT",
    "..",
    "btcusdt",
    "ＢＴＣUSDT",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAUSDT",
    "$(touch pwned)USDT",
    "",
];

impl Exchange {
    fn now_ms(&self) -> u64 {
        self.anchor_ms + self.started.elapsed().as_millis() as u64
    }

    fn stat(&self, update: impl FnOnce(&mut ReplayStats)) {
        update(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn chance(&self, rate: f64) -> bool {
        rate > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).uniform() < rate
    }

    /// Admission: the ban, back-off violations, injected bursts and the weight limit.
    /// `Err` is the response to send instead of serving.
    fn admit(&self, weight: u64, now: u64) -> Result<u64, Box<Response>> {
        let retry = self.scenario.limits.retry_after;
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let index = now / self.window_ms;
        if window.index != index {
            window.index = index;
            window.used = 0;
        }
        let window_end = (index + 1) * self.window_ms;
        self.stat(|s| s.requests += 1);
        let requests = self
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests;
        if let Some(limit) = self.scenario.faults.ban_after_requests
            && requests > limit
            && window.banned_until <= now
        {
            window.banned_until = now + self.scenario.ban_for().as_millis() as u64;
        }
        if window.banned_until > now {
            self.stat(|s| s.banned += 1);
            let wait = (window.banned_until - now).div_ceil(1000);
            return Err(self.refusal(
                418,
                -1003,
                &format!(
                    "Way too many requests; IP banned until {}.",
                    window.banned_until
                ),
                retry.then_some(wait),
                window.used,
            ));
        }
        if window.limited_until > now {
            window.episode_violations += 1;
            self.stat(|s| s.violations += 1);
            if window.episode_violations > self.scenario.limits.ban_after {
                window.banned_until = now + self.scenario.ban_for().as_millis() as u64;
                self.stat(|s| s.banned += 1);
                let wait = (window.banned_until - now).div_ceil(1000);
                return Err(self.refusal(
                    418,
                    -1003,
                    "Way too many requests after a 429; IP banned.",
                    retry.then_some(wait),
                    window.used,
                ));
            }
            self.stat(|s| s.rate_limited += 1);
            let wait = (window.limited_until - now).div_ceil(1000).max(1);
            return Err(self.refusal(
                429,
                -1003,
                "Too many requests; please use the websocket for live updates.",
                retry.then_some(wait),
                window.used,
            ));
        }
        let burst = self
            .scenario
            .faults
            .rate_limit_every
            .is_some_and(|every| every > 0 && requests.is_multiple_of(every));
        if burst || window.used + weight > self.limit.limit {
            window.limited_until = if burst && retry {
                now + 1000
            } else {
                window_end
            };
            window.episode_violations = 0;
            self.stat(|s| s.rate_limited += 1);
            let wait = (window.limited_until - now).div_ceil(1000).max(1);
            return Err(self.refusal(
                429,
                -1003,
                "Too many requests; current limit of IP is exceeded.",
                retry.then_some(wait),
                window.used,
            ));
        }
        window.used += weight;
        self.stat(|s| s.weight += weight);
        Ok(window.used)
    }

    /// An error response that refuses admission.
    fn refusal(
        &self,
        status: u16,
        code: i64,
        message: &str,
        retry_after: Option<u64>,
        used: u64,
    ) -> Box<Response> {
        Box::new(self.error(status, code, message, retry_after, used))
    }

    fn error(
        &self,
        status: u16,
        code: i64,
        message: &str,
        retry_after: Option<u64>,
        used: u64,
    ) -> Response {
        let body = serde_json::json!({ "code": code, "msg": message }).to_string();
        let mut builder = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header(self.header.as_str(), used.to_string())
            .header(PROVENANCE_HEADER, self.market.provenance());
        if let Some(seconds) = retry_after {
            builder = builder.header("retry-after", seconds.to_string());
        }
        builder.body(Body::from(body)).expect("valid response")
    }

    fn ok(&self, body: String, used: u64) -> Response {
        let mut bytes = body.into_bytes();
        if self.chance(self.scenario.faults.truncate_rate) {
            self.stat(|s| s.truncated += 1);
            bytes.truncate(bytes.len() / 2);
        }
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header(self.header.as_str(), used.to_string())
            .header(PROVENANCE_HEADER, self.market.provenance())
            .body(Body::from(bytes))
            .expect("valid response")
    }

    fn exchange_info(&self, now: u64) -> String {
        let mut symbols: Vec<serde_json::Value> = self
            .market
            .symbols()
            .iter()
            .map(|s| {
                let tick = format!("{}", 10f64.powi(-(s.price_decimals as i32)));
                let step = format!("{}", 10f64.powi(-(s.quantity_decimals as i32)));
                serde_json::json!({
                    "symbol": s.symbol, "pair": s.symbol, "contractType": "PERPETUAL",
                    "deliveryDate": 4133404800000u64, "onboardDate": s.onboard_ms,
                    "status": s.status, "baseAsset": s.base, "quoteAsset": s.quote,
                    "marginAsset": s.quote, "pricePrecision": s.price_decimals,
                    "quantityPrecision": s.quantity_decimals,
                    "underlyingType": "COIN", "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
                    "orderTypes": ["LIMIT", "MARKET", "STOP", "TAKE_PROFIT"],
                    "filters": [
                        {"filterType": "PRICE_FILTER", "tickSize": tick, "minPrice": tick, "maxPrice": "1000000"},
                        {"filterType": "LOT_SIZE", "stepSize": step, "minQty": step, "maxQty": "1000000"},
                        {"filterType": "MARKET_LOT_SIZE", "stepSize": step, "minQty": step, "maxQty": "100000"},
                        {"filterType": "MIN_NOTIONAL", "notional": "5"},
                        {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500", "multiplierDecimal": "4"}
                    ]
                })
            })
            .collect();
        if self.scenario.faults.hostile_symbols {
            for name in HOSTILE_SYMBOLS {
                symbols.push(serde_json::json!({
                    "symbol": name, "pair": name, "contractType": "PERPETUAL", "status": "TRADING",
                    "baseAsset": "EVIL", "quoteAsset": "USDT", "marginAsset": "USDT",
                    "onboardDate": 1_600_000_000_000u64, "filters": []
                }));
            }
        }
        let limit = &self.limit;
        serde_json::json!({
            "timezone": "UTC",
            "serverTime": now,
            "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": limit.interval, "intervalNum": limit.interval_num, "limit": limit.limit},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200}
            ],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": true, "autoAssetExchange": "-10000"}],
            "symbols": symbols,
        })
        .to_string()
    }

    fn ticker(&self, symbol: Option<&str>, now: u64) -> Result<String, (i64, String)> {
        let entry = |s: &str| {
            serde_json::json!({
                "symbol": s,
                "quoteVolume": format!("{}", (self.market.quote_volume_24h(s, now) * 100.0).round() / 100.0),
                "closeTime": now,
            })
        };
        match symbol {
            Some(symbol) => {
                if !self.market.symbols().iter().any(|s| s.symbol == symbol) {
                    return Err((-1121, "Invalid symbol.".into()));
                }
                Ok(entry(symbol).to_string())
            }
            None => Ok(serde_json::Value::Array(
                self.market
                    .symbols()
                    .iter()
                    .map(|s| entry(&s.symbol))
                    .collect(),
            )
            .to_string()),
        }
    }

    fn klines(
        &self,
        dataset: Dataset,
        params: &HashMap<String, String>,
        now: u64,
    ) -> Result<String, (i64, String)> {
        let symbol = mandatory(params, dataset.instrument_param())?;
        let interval = mandatory(params, "interval").and_then(|text| {
            Interval::parse(text).map_err(|_| (-1120, "Invalid interval.".to_owned()))
        })?;
        let number = |name: &str| number(params, name);
        let limit = number("limit")?.unwrap_or(500);
        if limit == 0 || limit > u64::from(MAX_PAGE) {
            return Err((
                -1130,
                "Data sent for parameter 'limit' is not valid.".into(),
            ));
        }
        let rows = self
            .market
            .kline_table(
                dataset,
                symbol,
                interval,
                number("startTime")?,
                number("endTime")?,
                limit as usize,
                now,
            )
            .map_err(|error| match error {
                MarketError::UnknownSymbol => (-1121, "Invalid symbol.".to_owned()),
                MarketError::UnsupportedInterval(message) => {
                    (-1120, format!("Invalid interval: {message}"))
                }
            })?;
        let mut body = String::with_capacity(rows.len() * 160 + 2);
        body.push('[');
        for (index, k) in rows.iter().enumerate() {
            if index > 0 {
                body.push(',');
            }
            let _ = write!(
                body,
                "[{},\"{}\",\"{}\",\"{}\",\"{}\",\"{}\",{},\"{}\",{},\"{}\",\"{}\",\"0\"]",
                k.open_time,
                k.open,
                k.high,
                k.low,
                k.close,
                k.volume,
                k.close_time,
                k.quote_volume,
                k.trades,
                k.taker_buy_base,
                k.taker_buy_quote
            );
        }
        body.push(']');
        Ok(body)
    }

    /// `GET /fundingRate`: `[{symbol, fundingRate, fundingTime, markPrice}]`, oldest first;
    /// default limit 100, at most 1000.
    fn funding(&self, params: &HashMap<String, String>, now: u64) -> Result<String, (i64, String)> {
        let symbol = mandatory(params, "symbol")?;
        let limit = number(params, "limit")?.unwrap_or(100);
        if limit == 0 || limit > u64::from(MAX_FUNDING_PAGE) {
            return Err((
                -1130,
                "Data sent for parameter 'limit' is not valid.".into(),
            ));
        }
        let rows = self
            .market
            .funding(
                symbol,
                number(params, "startTime")?,
                number(params, "endTime")?,
                limit as usize,
                now,
            )
            .map_err(|_| (-1121, "Invalid symbol.".to_owned()))?;
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                serde_json::json!({
                    "symbol": symbol,
                    "fundingRate": format!("{:.8}", row.funding_rate),
                    "fundingTime": row.funding_time,
                    "markPrice": "",
                })
            })
            .collect();
        Ok(serde_json::Value::Array(rows).to_string())
    }

    /// `GET /fundingInfo`: each symbol's funding interval, cap and floor.
    fn funding_info(&self) -> String {
        let rows: Vec<serde_json::Value> = self
            .market
            .funding_schedules()
            .into_iter()
            .map(|schedule| {
                let mut row = serde_json::json!({
                    "symbol": schedule.symbol,
                    "fundingIntervalHours": schedule.interval_hours,
                    "disclaimer": false,
                });
                if let Some(cap) = schedule.cap {
                    row["adjustedFundingRateCap"] = format!("{cap:.8}").into();
                    row["adjustedFundingRateFloor"] = format!("{:.8}", -cap).into();
                }
                row
            })
            .collect();
        serde_json::Value::Array(rows).to_string()
    }
}

/// A parameter the endpoint cannot do without, with Binance's error when it is missing.
fn mandatory<'a>(
    params: &'a HashMap<String, String>,
    name: &str,
) -> Result<&'a String, (i64, String)> {
    params.get(name).filter(|value| !value.is_empty()).ok_or((
        -1102,
        format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
    ))
}

/// An optional number parameter, with Binance's error when it is not one.
fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, (i64, String)> {
    params
        .get(name)
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                (
                    -1100,
                    format!(
                        "Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
                    ),
                )
            })
        })
        .transpose()
}

async fn handle(
    State(exchange): State<Arc<Exchange>>,
    Query(params): Query<HashMap<String, String>>,
    uri: Uri,
) -> Response {
    let path = uri.path();
    if path == "/__replay/stats" {
        let stats = exchange
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(
                serde_json::to_string(&stats).unwrap_or_default(),
            ))
            .expect("valid response");
    }
    let endpoint = exchange
        .scenario
        .path_prefixes
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix.as_str())?.strip_prefix('/'));
    let Some(endpoint) = endpoint else {
        return exchange.error(404, -5000, "Path not found.", None, 0);
    };
    let kline_table = Dataset::ALL
        .into_iter()
        .find(|dataset| dataset.is_kline_shaped() && dataset.endpoint() == endpoint);
    if exchange
        .scenario
        .unserved
        .iter()
        .any(|name| name == endpoint)
    {
        return exchange.error(404, -5000, "Path not found.", None, 0);
    }
    let weight = match (endpoint, kline_table) {
        ("ping" | "time" | "exchangeInfo" | "fundingRate" | "fundingInfo", _) => 1,
        ("ticker/24hr", _) if params.contains_key("symbol") => 1,
        ("ticker/24hr", _) => 40,
        (_, Some(dataset)) => {
            let limit = params
                .get("limit")
                .and_then(|text| text.parse::<u32>().ok())
                .unwrap_or(500);
            u64::from(dataset.weight(limit.clamp(1, MAX_PAGE)))
        }
        _ => return exchange.error(404, -5000, "Path not found.", None, 0),
    };
    let now = exchange.now_ms();
    let used = match exchange.admit(weight, now) {
        Ok(used) => used,
        Err(response) => return *response,
    };
    if let Some(latency) = exchange.scenario.latency() {
        tokio::time::sleep(latency).await;
    }
    if exchange.chance(exchange.scenario.faults.error_rate) {
        exchange.stat(|s| s.injected_errors += 1);
        return if exchange.chance(0.5) {
            exchange.error(503, -1001, "Service Unavailable.", None, used)
        } else {
            exchange.error(
                500,
                -1000,
                "An unknown error occurred while processing the request.",
                None,
                used,
            )
        };
    }
    let now = exchange.now_ms();
    let body = match endpoint {
        "ping" => Ok("{}".to_owned()),
        "time" => Ok(format!("{{\"serverTime\":{now}}}")),
        "exchangeInfo" => Ok(exchange.exchange_info(now)),
        "ticker/24hr" => exchange.ticker(params.get("symbol").map(String::as_str), now),
        "fundingInfo" => Ok(exchange.funding_info()),
        "fundingRate" => {
            exchange.stat(|s| s.funding_requests += 1);
            exchange.funding(&params, now)
        }
        _ => {
            exchange.stat(|s| s.klines_requests += 1);
            exchange.klines(kline_table.unwrap_or(Dataset::Klines), &params, now)
        }
    };
    match body {
        Ok(body) => exchange.ok(body, used),
        Err((code, message)) => exchange.error(400, code, &message, None, used),
    }
}

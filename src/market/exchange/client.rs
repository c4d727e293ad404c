//! One HTTP client for every Binance-compatible futures API (Aster, Binance USD-M, the replay
//! exchange): weight-budgeted, retrying with jittered back-off on timeouts, 5xx and damaged
//! bodies, waiting out 429s, and stopping dead on 418.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::limiter::{Charge, Limiter, Refusal};
use crate::market::model::{
    ApiErrorBody, Dataset, ExchangeInfo, FundingInfo, FundingRow, Kline, KlineRow, RateLimit,
    Ticker24h,
};

/// The response header naming where data came from: the replay exchange sends it so that
/// simulated data can never pass for real. Real exchanges do not send it.
pub const PROVENANCE_HEADER: &str = "x-asterflow-provenance";
/// Prefix of the used-weight headers: `X-MBX-USED-WEIGHT-1m`, `X-MBX-USED-WEIGHT-10s`.
pub const USED_WEIGHT_PREFIX: &str = "x-mbx-used-weight-";
/// How many 429s in a row (across every request of the run to this source) before giving up,
/// well before an exchange would escalate to a ban.
const MAX_RATE_LIMITED_IN_A_ROW: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(
        "the exchange banned this IP (HTTP 418) at {url}{}: asterflow stopped so the ban does not \
         escalate; wait it out, then lower the weight budget (rate_limits) before retrying{}",
        retry_after.map(|wait| format!(" for {}", crate::util::time::human(wait))).unwrap_or_default(),
        if message.is_empty() { String::new() } else { format!(" (exchange said: {message})") }
    )]
    Banned {
        url: String,
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("the exchange refused {url} with HTTP 403 (a firewall rule, not a rate limit){}", detail(.message))]
    Forbidden { url: String, message: String },
    #[error("{url}: HTTP {status}{}", detail(.message))]
    Api {
        url: String,
        status: u16,
        code: Option<i64>,
        message: String,
    },
    #[error("{url}: gave up after {attempts} attempts; last error: {last}")]
    Exhausted {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error(
        "{url}: rate limited (429) {count} times in a row; stopped before the exchange bans this IP. Lower rate_limits' collect_share, or check what else uses this IP"
    )]
    RateLimited {
        url: String,
        count: u32,
        retry_after: Option<Duration>,
    },
    #[error("{url}: unexpected response: {message}")]
    Decode { url: String, message: String },
    #[error("source {name}: {message}")]
    Setup { name: String, message: String },
    #[error("interrupted")]
    Cancelled,
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// Counters for the collection report.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub weight: AtomicU64,
}

/// What one successful call cost.
#[derive(Debug, Clone, Default)]
pub struct CallStats {
    pub attempts: u32,
    pub retries: u32,
    pub rate_limited: u32,
    pub latency: Duration,
    pub used_weight: Option<u64>,
}

/// A Binance-compatible REST API.
#[derive(Debug)]
pub struct ExchangeClient {
    http: reqwest::Client,
    base_url: String,
    path_prefix: String,
    max_retries: u32,
    pub limiter: Limiter,
    pub counters: Counters,
    /// The header suffix of the window the limiter follows (`1m`, `10s`).
    weight_header: std::sync::Mutex<Option<String>>,
    provenance: std::sync::Mutex<Option<String>>,
}

/// Installs rustls' ring provider once per process (reqwest is built without a default one).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl ExchangeClient {
    pub fn new(
        base_url: &str,
        path_prefix: &str,
        timeout: Duration,
        max_retries: u32,
    ) -> Result<Self, ExchangeError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("asterflow/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|error| ExchangeError::Decode {
                url: base_url.to_owned(),
                message: format!("cannot build the HTTP client: {error}"),
            })?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            path_prefix: path_prefix.to_owned(),
            max_retries,
            limiter: Limiter::new(),
            counters: Counters::default(),
            weight_header: std::sync::Mutex::new(None),
            provenance: std::sync::Mutex::new(None),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `exchange` for a real exchange, or what the replay exchange says its data is.
    pub fn provenance(&self) -> String {
        self.provenance
            .lock()
            .ok()
            .and_then(|value| value.clone())
            .unwrap_or_else(|| "exchange".to_owned())
    }

    fn url(&self, endpoint: &str, query: &[(&str, String)]) -> String {
        let mut url = format!("{}{}/{}", self.base_url, self.path_prefix, endpoint);
        for (index, (key, value)) in query.iter().enumerate() {
            url.push(if index == 0 { '?' } else { '&' });
            url.push_str(key);
            url.push('=');
            url.push_str(value);
        }
        url
    }

    /// Measures the clock offset with `GET /time` and reads the declared limits; configures the
    /// limiter with `share` of the tightest request-weight limit until told otherwise.
    pub async fn connect(
        &self,
        share: f64,
        cancel: &CancellationToken,
    ) -> Result<ExchangeInfo, ExchangeError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Time {
            server_time: i64,
        }
        let sent = crate::util::time::now_ms() as i64;
        let (time, _) = self.get::<Time>("time", &[], 1, cancel).await?;
        let received = crate::util::time::now_ms() as i64;
        self.limiter
            .set_clock_offset(time.server_time - (sent + received) / 2);
        let (info, _) = self
            .get::<ExchangeInfo>("exchangeInfo", &[], 1, cancel)
            .await?;
        if let Some(limit) = tightest_weight_limit(&info.rate_limits) {
            let window = limit.window_ms().unwrap_or(60_000);
            self.limiter.configure(
                window,
                ((limit.limit as f64) * share).floor().max(1.0) as u64,
            );
            *self.weight_header.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(limit.header_suffix().to_lowercase());
        }
        Ok(info)
    }

    /// `GET /ticker/24hr` for every symbol (weight 40).
    pub async fn tickers(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Vec<Ticker24h>, ExchangeError> {
        Ok(self.get("ticker/24hr", &[], 40, cancel).await?.0)
    }

    /// `GET /klines`: up to `limit` candles opening in `[start, end]`, oldest first.
    pub async fn klines(
        &self,
        symbol: &str,
        interval: &str,
        start_ms: u64,
        end_ms: u64,
        limit: u32,
        cancel: &CancellationToken,
    ) -> Result<(Vec<Kline>, CallStats), ExchangeError> {
        self.kline_table(
            Dataset::Klines,
            symbol,
            interval,
            start_ms,
            end_ms,
            limit,
            cancel,
        )
        .await
    }

    /// Any kline-shaped endpoint (`klines`, `markPriceKlines`, `indexPriceKlines`,
    /// `premiumIndexKlines`): up to `limit` bars opening in `[start, end]`, oldest first.
    #[allow(clippy::too_many_arguments)]
    pub async fn kline_table(
        &self,
        dataset: Dataset,
        symbol: &str,
        interval: &str,
        start_ms: u64,
        end_ms: u64,
        limit: u32,
        cancel: &CancellationToken,
    ) -> Result<(Vec<Kline>, CallStats), ExchangeError> {
        let query = [
            (dataset.instrument_param(), symbol.to_owned()),
            ("interval", interval.to_owned()),
            ("startTime", start_ms.to_string()),
            ("endTime", end_ms.to_string()),
            ("limit", limit.to_string()),
        ];
        let (rows, stats) = self
            .get::<Vec<KlineRow>>(
                dataset.endpoint(),
                &query,
                u64::from(dataset.weight(limit)),
                cancel,
            )
            .await?;
        Ok((rows.into_iter().map(Kline::from).collect(), stats))
    }

    /// `GET /fundingRate`: up to `limit` settled rates timed in `[start, end]`, oldest first.
    pub async fn funding_rates(
        &self,
        symbol: &str,
        start_ms: u64,
        end_ms: u64,
        limit: u32,
        cancel: &CancellationToken,
    ) -> Result<(Vec<FundingRow>, CallStats), ExchangeError> {
        let query = [
            ("symbol", symbol.to_owned()),
            ("startTime", start_ms.to_string()),
            ("endTime", end_ms.to_string()),
            ("limit", limit.to_string()),
        ];
        self.get(
            Dataset::Funding.endpoint(),
            &query,
            u64::from(Dataset::Funding.weight(limit)),
            cancel,
        )
        .await
    }

    /// `GET /fundingInfo` (weight 1): the symbols whose funding interval, cap or floor differ
    /// from the defaults.
    pub async fn funding_info(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Vec<FundingInfo>, ExchangeError> {
        Ok(self.get("fundingInfo", &[], 1, cancel).await?.0)
    }

    /// A cheap request for probing: `GET /time` (weight 1). A 429 is not waited out but
    /// returned (after telling the limiter to honour it), so a probe stops at the first one.
    pub async fn probe(&self, cancel: &CancellationToken) -> Result<CallStats, ExchangeError> {
        Ok(self
            .request::<serde_json::Value>("time", &[], 1, cancel, true)
            .await?
            .1)
    }

    /// One GET with the weight budget, retries and rate-limit handling.
    pub async fn get<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        query: &[(&str, String)],
        weight: u64,
        cancel: &CancellationToken,
    ) -> Result<(T, CallStats), ExchangeError> {
        self.request(endpoint, query, weight, cancel, false).await
    }

    async fn request<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        query: &[(&str, String)],
        weight: u64,
        cancel: &CancellationToken,
        stop_on_429: bool,
    ) -> Result<(T, CallStats), ExchangeError> {
        let url = self.url(endpoint, query);
        let mut stats = CallStats::default();
        let mut last_error = String::new();
        loop {
            if stats.retries > self.max_retries {
                return Err(ExchangeError::Exhausted {
                    url,
                    attempts: stats.attempts,
                    last: last_error,
                });
            }
            let charge = match self.limiter.acquire(weight, cancel).await {
                Ok(charge) => charge,
                Err(Refusal::Cancelled) => return Err(ExchangeError::Cancelled),
                Err(Refusal::Banned(retry_after)) => {
                    return Err(ExchangeError::Banned {
                        url,
                        retry_after,
                        message: "an earlier request was answered 418; nothing more is sent".into(),
                    });
                }
                Err(Refusal::TooHeavy {
                    weight,
                    budget,
                    window_ms,
                }) => {
                    return Err(ExchangeError::Setup {
                        name: self.base_url.clone(),
                        message: format!(
                            "{url} weighs {weight}, more than the whole budget of {budget} per {}; raise rate_limits' collect_share or lower page_size",
                            crate::util::time::human(Duration::from_millis(window_ms))
                        ),
                    });
                }
            };
            stats.attempts += 1;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            self.counters.weight.fetch_add(weight, Ordering::Relaxed);
            let started = Instant::now();
            let sent = tokio::select! {
                _ = cancel.cancelled() => return Err(ExchangeError::Cancelled),
                response = self.send(&url) => response,
            };
            let outcome = match sent {
                Ok((status, headers, body)) => {
                    stats.latency = started.elapsed();
                    self.note_headers(&headers, &charge, &mut stats);
                    self.classify::<T>(&url, status, &headers, &body)
                }
                Err(error) => Attempt::Retry(describe_transport(&error)),
            };
            match outcome {
                Attempt::Done(value) => {
                    self.limiter.succeeded();
                    return Ok((value, stats));
                }
                Attempt::Fatal(error) => {
                    if let ExchangeError::Banned { retry_after, .. } = &error {
                        // Every other request of the run stops here too.
                        self.limiter.ban(*retry_after);
                    }
                    return Err(error);
                }
                Attempt::Retry(message) => {
                    last_error = message;
                    stats.retries += 1;
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    if stats.retries > self.max_retries {
                        continue;
                    }
                    let delay = self.limiter.retry_delay(stats.retries - 1);
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(ExchangeError::Cancelled),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Attempt::RateLimited(retry_after) => {
                    stats.rate_limited += 1;
                    self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                    // Everyone sharing the limiter waits; acquire() sleeps until then.
                    let (_, in_a_row) = self.limiter.back_off(retry_after);
                    if stop_on_429 || in_a_row > MAX_RATE_LIMITED_IN_A_ROW {
                        return Err(ExchangeError::RateLimited {
                            url,
                            count: in_a_row,
                            retry_after,
                        });
                    }
                }
            }
        }
    }

    async fn send(
        &self,
        url: &str,
    ) -> Result<(StatusCode, HeaderMap, bytes::Bytes), reqwest::Error> {
        let response = self.http.get(url).send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok((status, headers, body))
    }

    fn note_headers(&self, headers: &HeaderMap, charge: &Charge, stats: &mut CallStats) {
        let wanted = self
            .weight_header
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(used) = used_weight(headers, wanted.as_deref()) {
            stats.used_weight = Some(used);
            self.limiter.observe(charge, used);
        }
        if let Some(value) = headers
            .get(PROVENANCE_HEADER)
            .and_then(|value| value.to_str().ok())
        {
            let clean: String = value
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(32)
                .collect();
            *self.provenance.lock().unwrap_or_else(|e| e.into_inner()) = Some(clean);
        }
    }

    fn classify<T: DeserializeOwned>(
        &self,
        url: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Attempt<T> {
        let message = || {
            serde_json::from_slice::<ApiErrorBody>(body)
                .map(|error| format!("{} (code {})", error.msg, error.code))
                .unwrap_or_else(|_| {
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
                })
        };
        match status.as_u16() {
            200 => match serde_json::from_slice::<T>(body) {
                Ok(value) => Attempt::Done(value),
                // A truncated or garbled body: the request may succeed next time.
                Err(error) => {
                    Attempt::Retry(format!("unreadable body ({} bytes): {error}", body.len()))
                }
            },
            429 => Attempt::RateLimited(retry_after(headers)),
            418 => Attempt::Fatal(ExchangeError::Banned {
                url: url.to_owned(),
                retry_after: retry_after(headers),
                message: message(),
            }),
            403 => Attempt::Fatal(ExchangeError::Forbidden {
                url: url.to_owned(),
                message: message(),
            }),
            408 | 500..=599 => Attempt::Retry(format!("HTTP {status}: {}", message())),
            code => {
                let body = serde_json::from_slice::<ApiErrorBody>(body).ok();
                Attempt::Fatal(ExchangeError::Api {
                    url: url.to_owned(),
                    status: code,
                    code: body.as_ref().map(|body| body.code),
                    message: message(),
                })
            }
        }
    }
}

enum Attempt<T> {
    Done(T),
    Retry(String),
    RateLimited(Option<Duration>),
    Fatal(ExchangeError),
}

fn describe_transport(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "transport error".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` in seconds, when the exchange sent one.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The used weight for the window `suffix` (`1m`, `10s`); without a known window, the only
/// used-weight header present.
pub fn used_weight(headers: &HeaderMap, suffix: Option<&str>) -> Option<u64> {
    let mut found = headers.iter().filter_map(|(name, value)| {
        let window = name.as_str().strip_prefix(USED_WEIGHT_PREFIX)?;
        let used = value.to_str().ok()?.trim().parse::<u64>().ok()?;
        Some((window.to_owned(), used))
    });
    match suffix {
        Some(suffix) => found
            .find(|(window, _)| window == suffix)
            .map(|(_, used)| used),
        None => found.next().map(|(_, used)| used),
    }
}

/// The request-weight limit that allows the least weight per second.
pub fn tightest_weight_limit(limits: &[RateLimit]) -> Option<&RateLimit> {
    limits
        .iter()
        .filter(|limit| limit.is_request_weight() && limit.window_ms().is_some() && limit.limit > 0)
        .min_by(|a, b| {
            let rate =
                |limit: &RateLimit| limit.limit as f64 / limit.window_ms().unwrap_or(1) as f64;
            rate(a).total_cmp(&rate(b))
        })
}

/// A client shared by every stage of a run that names the same source.
pub type SharedClient = Arc<ExchangeClient>;

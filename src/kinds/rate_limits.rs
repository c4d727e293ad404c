//! `rate_limits`: measures what the collector may safely do against a source, and writes the
//! recommendation `collect` obeys (`recommendation.json`).
//!
//! ```yaml
//! rate_limits:
//!   kind: rate_limits
//!   with:
//!     source: aster
//!     max_share: 0.2        # never use more than this share of a window's weight to probe
//!     probes: 20            # at most this many cheap requests (GET /time, weight 1)
//!     collect_share: 0.9    # the share of the declared limit collect may use
//!     max_concurrency: 8
//! ```
//!
//! It reads the declared `REQUEST_WEIGHT` limits (whatever window the exchange declares), probes,
//! reading the used-weight header and latency, stops at the first 429 (honouring `Retry-After`),
//! and recommends a weight budget per window, a concurrency, and the page size that fetches the
//! most rows per unit of weight. Weight other clients on the same IP are seen using is left to
//! them.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::{ParamError, parse_params};
use crate::engine::stage::{
    BoxFuture, FileRef, PrepareContext, PreparedStage, StageContext, StageError, StageKind,
};
use crate::kinds::discover::{exchange_source, params_with_source, source_files};
use crate::kinds::write_json;
use crate::market::exchange::client::{ExchangeError, tightest_weight_limit};
use crate::market::exchange::connections::Connections;
use crate::market::exchange::source::Source;
use crate::market::model::{RateLimit, klines_weight, weight_optimal_page};

pub struct RateLimits;

/// The file `collect` looks for among its inputs.
pub const RECOMMENDATION_FILE: &str = "recommendation.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    source: String,
    #[serde(default = "default_max_share")]
    max_share: f64,
    #[serde(default = "default_probes")]
    probes: u32,
    #[serde(default = "default_collect_share")]
    collect_share: f64,
    #[serde(default = "default_max_concurrency")]
    max_concurrency: u32,
}

fn default_max_share() -> f64 {
    0.2
}
fn default_probes() -> u32 {
    20
}
fn default_collect_share() -> f64 {
    0.9
}
fn default_max_concurrency() -> u32 {
    8
}

/// What `collect` obeys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recommendation {
    pub source: String,
    pub base_url: String,
    pub declared: Vec<RateLimit>,
    /// The window the budget is for, and its used-weight header.
    pub window_ms: u64,
    pub weight_header: String,
    pub declared_limit: u64,
    /// Weight `collect` may use per window.
    pub weight_budget: u64,
    pub weight_budget_per_minute: f64,
    pub concurrency: u32,
    pub page_size: u32,
    pub page_weight: u32,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub probes: u32,
    pub probe_weight: u64,
    /// Weight seen used by others in the probe window.
    pub external_weight: u64,
    pub rate_limited: bool,
    pub measured_at_ms: u64,
}

#[derive(Debug)]
struct Prepared {
    params: Params,
    source: Arc<Source>,
}

impl StageKind for RateLimits {
    fn name(&self) -> &'static str {
        "rate_limits"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let params: Params = parse_params(params)?;
        let source = exchange_source(context, &params.source, self.name())?;
        for (field, value, range) in [
            ("max_share", params.max_share, 0.0..=0.5),
            ("collect_share", params.collect_share, 0.0..=0.98),
        ] {
            if !(value > 0.0 && range.contains(&value)) {
                return Err(ParamError::new(
                    YamlPath::root().key(field),
                    format!("`{field}` must be in (0, {}]: got {value}", range.end()),
                ));
            }
        }
        if params.probes == 0 || params.probes > 200 {
            return Err(ParamError::new(
                YamlPath::root().key("probes"),
                "probes must be between 1 and 200",
            ));
        }
        if params.max_concurrency == 0 || params.max_concurrency > 64 {
            return Err(ParamError::new(
                YamlPath::root().key("max_concurrency"),
                "max_concurrency must be between 1 and 64",
            ));
        }
        Ok(Box::new(Prepared { params, source }))
    }
}

/// `share` of `total`, rounded down, without `0.9 * 2400 = 2159.99...` surprises.
fn share_of(total: u64, share: f64) -> u64 {
    ((total as f64) * share + 1e-6).floor() as u64
}

fn percentile(sorted: &[f64], share: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (share * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        params_with_source(&self.params, &self.source)
    }

    fn files(&self) -> Vec<FileRef> {
        source_files(&self.source)
    }

    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(async move {
            let connection = context
                .resources
                .get::<Connections>()
                .connect(&self.source, &context.cancel)
                .await?;
            let client = &connection.client;
            let declared = connection.info.rate_limits.clone();
            let Some(limit) = tightest_weight_limit(&declared).cloned() else {
                return Err(StageError::Failed(format!(
                    "{} declares no REQUEST_WEIGHT limit in exchangeInfo.rateLimits; refusing to guess one",
                    self.source.name
                )));
            };
            let window_ms = limit.window_ms().unwrap_or(60_000);
            let probe_budget = share_of(limit.limit, self.params.max_share);
            let mut latencies = Vec::new();
            let mut probe_weight = 0u64;
            let mut external = 0u64;
            let mut rate_limited = false;
            for probe in 0..self.params.probes {
                let (own, _) = client.limiter.own_in_window();
                if own + 1 > probe_budget.max(1) {
                    context.log(&format!(
                        "probe {probe}: the probe share ({probe_budget}) is spent"
                    ));
                    break;
                }
                match client.probe(&context.cancel).await {
                    Ok(stats) => {
                        probe_weight += 1;
                        latencies.push(stats.latency.as_secs_f64() * 1000.0);
                        if let Some(used) = stats.used_weight {
                            let (own, _) = client.limiter.own_in_window();
                            external = external.max(used.saturating_sub(own));
                            if used >= probe_budget {
                                context.log(&format!(
                                    "probe {probe}: {used} weight used in the window; stopping"
                                ));
                                break;
                            }
                        }
                        context
                            .progress
                            .advance(u64::from(probe) + 1, u64::from(self.params.probes));
                    }
                    Err(ExchangeError::RateLimited { retry_after, .. }) => {
                        rate_limited = true;
                        let wait = retry_after.unwrap_or(Duration::from_millis(window_ms));
                        context.warn(&format!(
                            "429 after {probe} probes; waiting {} as the exchange asked, then stopping",
                            crate::util::time::human(wait)
                        ));
                        tokio::select! {
                            _ = context.cancel.cancelled() => return Err(StageError::Cancelled),
                            _ = tokio::time::sleep(wait) => {}
                        }
                        break;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            latencies.sort_by(f64::total_cmp);
            let p50 = percentile(&latencies, 0.5);
            let p95 = percentile(&latencies, 0.95);
            let available = limit.limit.saturating_sub(external);
            let mut budget = share_of(available, self.params.collect_share);
            if rate_limited {
                // The exchange disagreed with its own declaration: be twice as careful.
                budget /= 2;
            }
            let budget = budget.max(1);
            let page_size = weight_optimal_page();
            let page_weight = klines_weight(page_size);
            // Enough requests in flight to spend the budget at the observed latency, but never
            // more than the headroom above the budget can absorb at a window boundary.
            let requests_per_second =
                budget as f64 / page_weight as f64 / (window_ms as f64 / 1000.0);
            let wanted = (requests_per_second * (p95.max(1.0) / 1000.0) * 1.5).ceil() as u32 + 1;
            let headroom =
                (limit.limit.saturating_sub(budget) / u64::from(page_weight)).max(1) as u32;
            let concurrency = wanted
                .clamp(1, self.params.max_concurrency)
                .min(headroom)
                .max(1);
            let recommendation = Recommendation {
                source: self.source.name.clone(),
                base_url: client.base_url().to_owned(),
                declared,
                window_ms,
                weight_header: format!("X-MBX-USED-WEIGHT-{}", limit.header_suffix()),
                declared_limit: limit.limit,
                weight_budget: budget,
                weight_budget_per_minute: budget as f64 * 60_000.0 / window_ms as f64,
                concurrency,
                page_size,
                page_weight,
                latency_ms_p50: (p50 * 100.0).round() / 100.0,
                latency_ms_p95: (p95 * 100.0).round() / 100.0,
                probes: latencies.len() as u32,
                probe_weight,
                external_weight: external,
                rate_limited,
                measured_at_ms: crate::util::time::now_ms(),
            };
            write_json(
                &context.output_dir.join(RECOMMENDATION_FILE),
                &recommendation,
            )?;
            context.progress.message(format!(
                "budget {budget}/{} per {}, concurrency {concurrency}, page {page_size}, p95 {:.0}ms",
                limit.limit,
                crate::util::time::human(Duration::from_millis(window_ms)),
                p95
            ));
            Ok(())
        })
    }
}

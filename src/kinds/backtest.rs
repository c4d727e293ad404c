//! `backtest`: trades the out-of-sample class probabilities of a `train` stage on the validated
//! prices, with fees, slippage, funding, stops, targets and risk sizing, beside buy-and-hold of
//! the same symbols over the same bars.
//!
//! ```yaml
//! backtest:
//!   kind: backtest
//!   needs: [train, validate, discover]   # predictions, klines, and (optional) the universe
//!   with:
//!     interval: 1h
//!     entry: {long_above: 0.5, short: false}
//!     exit: {stop: 0.01, target: 0.02, horizon: 4, reversal: true}
//!     capital: 10000
//!     risk_per_trade: 0.01
//!     max_positions: 5
//!     fees: {maker: 0.0005, taker: 0.00075}
//!     slippage: 0.0002
//!     daily_loss_limit: 0.05                                  # optional: portfolio rules,
//!     correlation: {window: 168, max: 0.8, max_correlated: 2} # each off by default
//!     sizing: risk                    # or volatility (target_volatility, volatility_window),
//!                                     # or kelly (kelly_fraction)
//!     monte_carlo: {paths: 2000, block: 24, seed: 1}          # default; null for none
//! ```
//!
//! Outputs: `trades.parquet`, `equity.parquet` (per bar: equity, drawdown, positions, exposure,
//! the buy-and-hold equity), `metrics.json` and `metrics.txt`, `provenance.json`;
//! `backtest_report.json` (timings, bar-steps per second) is a report.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::backtest::inputs::{self, EntryParams};
use crate::backtest::params::{RuleParams, parse_with_rules};
use crate::backtest::{self as engine, ExitReason, Market, Rules, Simulation, Summary};
use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::ParamError;
use crate::engine::stage::{
    BoxFuture, OutputShape, PrepareContext, PreparedStage, ShapeError, ShapeTable, StageContext,
    StageError, StageKind,
};
use crate::market::model::Interval;

pub struct Backtest;

pub const TRADES_FILE: &str = "trades.parquet";
pub const EQUITY_FILE: &str = "equity.parquet";
pub const METRICS_FILE: &str = "metrics.json";
const REPORT_FILE: &str = "backtest_report.json";

/// The stage's own params; the trading rules (`exit`, `capital`, `fees`, the portfolio rules,
/// ...) sit beside them in `with` and are `backtest::params::RuleParams`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_interval")]
    interval: String,
    #[serde(default = "default_predictions_table")]
    predictions_table: String,
    #[serde(default = "default_universe_table")]
    universe_table: String,
    #[serde(default = "default_funding_table")]
    funding_table: String,
    #[serde(default)]
    entry: EntryParams,
    /// The outcome distribution: a stationary block bootstrap of the per-bar returns (`null`:
    /// none).
    #[serde(default = "default_monte_carlo")]
    monte_carlo: Option<crate::backtest::outcomes::MonteCarlo>,
}

const OWN_KEYS: &[&str] = &[
    "interval",
    "predictions_table",
    "universe_table",
    "funding_table",
    "entry",
    "monte_carlo",
];

fn default_monte_carlo() -> Option<crate::backtest::outcomes::MonteCarlo> {
    Some(crate::backtest::outcomes::MonteCarlo::default())
}
fn default_interval() -> String {
    "1h".into()
}
fn default_predictions_table() -> String {
    "predictions".into()
}
fn default_universe_table() -> String {
    "universe".into()
}
fn default_funding_table() -> String {
    "funding".into()
}

#[derive(Debug)]
struct Prepared {
    params: Params,
    rules: RuleParams,
    bar_ms: i64,
}

impl StageKind for Backtest {
    fn name(&self) -> &'static str {
        "backtest"
    }

    fn code_version(&self) -> u32 {
        // 4: equity.parquet gains the fees and the slippage paid so far.
        // 5: metrics.json gains the outcome distribution (`outcomes`).
        5
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        _context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let (params, rules): (Params, RuleParams) = parse_with_rules(params, OWN_KEYS)?;
        let root = YamlPath::root();
        let interval = Interval::parse(&params.interval)
            .map_err(|message| ParamError::new(root.clone().key("interval"), message))?;
        params.entry.check(root.clone().key("entry"))?;
        rules.check(&root)?;
        if let Some(monte_carlo) = &params.monte_carlo {
            let at = root.key("monte_carlo");
            if !(1..=100_000).contains(&monte_carlo.paths) {
                return Err(ParamError::new(
                    at.key("paths"),
                    "paths must be between 1 and 100000 (monte_carlo: null for none)",
                ));
            }
            crate::diagnostic::params::check_range(
                at.key("block"),
                monte_carlo.block,
                1.0,
                1e6,
                "the mean block length in bars (1: independent draws)",
            )?;
        }
        Ok(Box::new(Prepared {
            bar_ms: interval.millis() as i64,
            params,
            rules,
        }))
    }
}

fn trades_schema() -> SchemaRef {
    let float = |name: &str| Field::new(name, DataType::Float64, false);
    let int = |name: &str| Field::new(name, DataType::Int64, false);
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("symbol"),
        text("side"),
        int("entry_time"),
        float("entry_price"),
        int("exit_time"),
        float("exit_price"),
        float("size"),
        float("notional"),
        float("fees"),
        float("funding"),
        float("pnl"),
        float("return"),
        int("bars"),
        text("exit_reason"),
    ]))
}

fn equity_schema() -> SchemaRef {
    let float = |name: &str| Field::new(name, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        Field::new("open_time", DataType::Int64, false),
        float("equity"),
        float("drawdown"),
        Field::new("positions", DataType::UInt32, false),
        float("exposure"),
        float("buy_and_hold"),
        float("buy_and_hold_drawdown"),
        // Fees and slippage paid so far: equity + fees + slippage is the equity before costs.
        float("fees"),
        float("slippage"),
    ]))
}

impl Prepared {
    /// The stage's params and its rules, as one flat mapping (as written in `with`).
    fn all_params(&self) -> serde_json::Value {
        let mut all = serde_json::to_value(&self.params).unwrap_or_default();
        if let (Some(all), serde_json::Value::Object(rules)) = (
            all.as_object_mut(),
            serde_json::to_value(&self.rules).unwrap_or_default(),
        ) {
            all.extend(rules);
        }
        all
    }

    async fn execute(&self, context: &StageContext) -> Result<(), StageError> {
        let params = &self.params;
        let started = std::time::Instant::now();
        let synthetic = crate::kinds::sql::mark_provenance(context)?;
        let session = crate::sql::input_session(context.input_dirs(), &context.data_dir)
            .await
            .map_err(StageError::failed)?;
        for (table, what) in [
            (
                params.predictions_table.as_str(),
                "predictions (a train stage)",
            ),
            (
                crate::sql::KLINES_TABLE,
                "klines (a validate or collect stage)",
            ),
        ] {
            if !crate::sql::has_table(&session, table) {
                return Err(StageError::failed(format!(
                    "no input provides a table `{table}`: add the stage with the {what} to `needs`"
                )));
            }
        }
        context.progress.message("reading predictions and prices");
        let loaded = inputs::load(
            &session,
            &params.predictions_table,
            &params.interval,
            self.bar_ms,
            &self.params.entry.rule(),
        )
        .await
        .map_err(StageError::failed)?;
        if loaded.off_grid > 0 {
            context.warn(&format!(
                "{} prediction(s) are not at a {} bar's open time and were ignored: is `interval` the features' interval?",
                loaded.off_grid, params.interval
            ));
        }
        if loaded.unpriced > 0 {
            context.log(&format!(
                "{} prediction(s) fall on bars without a validated price",
                loaded.unpriced
            ));
        }
        let market = loaded.market;
        let priced = market.close.iter().filter(|close| !close.is_nan()).count();
        if priced == 0 {
            return Err(StageError::failed(format!(
                "no {} klines cover the predicted symbols and span: check `interval` and the validate stage",
                params.interval
            )));
        }
        let instruments = if crate::sql::has_table(&session, &params.universe_table) {
            let (instruments, found) =
                inputs::instruments(&session, &params.universe_table, &market)
                    .await
                    .map_err(StageError::failed)?;
            if found < market.symbols.len() {
                context.warn(&format!(
                    "`{}` has step sizes for {found} of {} symbols; the others trade unrounded",
                    params.universe_table,
                    market.symbols.len()
                ));
            }
            instruments
        } else {
            context.warn(&format!(
                "no input provides `{}` (a discover stage): sizes are not rounded to step sizes or checked against minimum notionals",
                params.universe_table
            ));
            vec![engine::Instrument::default(); market.symbols.len()]
        };
        let funding = if crate::sql::has_table(&session, &params.funding_table) {
            let (rates, events) = inputs::funding(&session, &params.funding_table, &market)
                .await
                .map_err(StageError::failed)?;
            if events == 0 {
                // A lake input always provides the table; empty when funding was not collected.
                context.log("no funding settlement in the inputs' span: funding is not charged");
            } else {
                context.log(&format!("{events} funding events in the backtest span"));
            }
            Some(rates)
        } else {
            context.log("no funding table: funding is not charged");
            None
        };
        let loaded_in = started.elapsed();

        context.progress.message(format!(
            "simulating {} symbols x {} bars",
            market.symbols.len(),
            market.times.len()
        ));
        let rules = self.rules.rules();
        let signals = loaded.signals;
        let (market, simulation, benchmark, simulated_in) =
            tokio::task::spawn_blocking(move || {
                let clock = std::time::Instant::now();
                let simulation =
                    engine::simulate(&market, &signals, &instruments, funding.as_deref(), &rules);
                let simulated_in = clock.elapsed();
                let benchmark = engine::buy_and_hold(&market, &rules);
                (market, simulation, benchmark, simulated_in)
            })
            .await
            .map_err(|error| StageError::failed(format!("the simulation stopped: {error}")))?;

        let mut summary = summarise(&market, &simulation, &benchmark, &rules);
        if let Some(monte_carlo) = &params.monte_carlo {
            context
                .progress
                .message(format!("bootstrapping {} paths", monte_carlo.paths));
            let returns = crate::backtest::outcomes::bar_returns(&simulation.equity, rules.capital);
            summary.outcomes = crate::backtest::outcomes::bootstrap(
                &market.times,
                &returns,
                market.bar_ms,
                monte_carlo,
                std::thread::available_parallelism().map_or(2, usize::from),
            );
        }
        write_trades(context, &market, &simulation)?;
        write_equity(context, &market, &simulation, &benchmark, rules.capital)?;
        let text = render(&summary, &market, synthetic);
        let mut metrics = serde_json::to_value(&summary).map_err(StageError::failed)?;
        metrics["synthetic"] = synthetic.into();
        metrics["params"] = self.all_params();
        crate::kinds::write_json(&context.output_dir.join(METRICS_FILE), &metrics)?;
        fs_err::write(context.output_dir.join("metrics.txt"), &text)?;
        context.progress.report(text);
        let seconds = simulated_in.as_secs_f64();
        crate::kinds::write_json(
            &context.output_dir.join(REPORT_FILE),
            &serde_json::json!({
                "load_seconds": loaded_in.as_secs_f64(),
                "simulate_seconds": seconds,
                "bar_steps": simulation.bar_steps,
                "bar_steps_per_second": simulation.bar_steps as f64 / seconds.max(1e-9),
            }),
        )?;
        Ok(())
    }
}

fn summarise(
    market: &Market,
    simulation: &Simulation,
    benchmark: &[f64],
    rules: &Rules,
) -> Summary {
    let strategy = engine::performance(&simulation.equity, rules.capital, market.bar_ms);
    let buy_and_hold = engine::performance(benchmark, rules.capital, market.bar_ms);
    let trades = engine::trade_stats(&simulation.trades);
    let mut exit_reasons = std::collections::BTreeMap::new();
    for trade in &simulation.trades {
        *exit_reasons
            .entry(trade.exit_reason.word().to_owned())
            .or_default() += 1;
    }
    let verdict = if trades.trades == 0 {
        "no trades: the model never crossed the entry threshold".to_owned()
    } else {
        let better_return = strategy.total_return > buy_and_hold.total_return;
        let better_sharpe = strategy.sharpe.unwrap_or(f64::NEG_INFINITY)
            > buy_and_hold.sharpe.unwrap_or(f64::NEG_INFINITY);
        match (better_return, better_sharpe) {
            (true, true) => "beat buy-and-hold on return and on Sharpe",
            (true, false) => "beat buy-and-hold on return but not on Sharpe",
            (false, true) => "beat buy-and-hold on Sharpe but not on return",
            (false, false) => "did not beat buy-and-hold",
        }
        .to_owned()
    };
    let stamp =
        |time: Option<&i64>| crate::util::time::rfc3339(time.copied().unwrap_or(0).max(0) as u64);
    Summary {
        from: stamp(market.times.first()),
        to: stamp(market.times.last()),
        bars: market.times.len(),
        symbols: market.symbols.len(),
        periods_per_year: engine::periods_per_year(market.bar_ms),
        strategy,
        exposure: crate::backtest::metrics::exposure(&simulation.positions),
        fees_paid: simulation.fees,
        funding_paid: simulation.funding,
        before_fees: engine::before_fees(&simulation.trades),
        trades,
        exit_reasons,
        skipped: simulation.skipped,
        buy_and_hold,
        verdict,
        outcomes: None,
    }
}

/// `metrics.txt`: the figures beside buy-and-hold.
fn render(summary: &Summary, market: &Market, synthetic: bool) -> String {
    let mut text = String::new();
    if synthetic {
        text.push_str(&format!(
            "*** {} ***\n",
            crate::provenance::SYNTHETIC_BANNER
        ));
    }
    text.push_str(&format!(
        "backtest {} to {}: {} symbols x {} bars of {} ms, out-of-sample signals\n",
        summary.from, summary.to, summary.symbols, summary.bars, market.bar_ms
    ));
    let percent =
        |value: Option<f64>| value.map_or("n/a".to_owned(), |v| format!("{:+.2}%", v * 100.0));
    let ratio = |value: Option<f64>| value.map_or("n/a".to_owned(), |v| format!("{v:.2}"));
    let (s, b) = (&summary.strategy, &summary.buy_and_hold);
    text.push_str(&format!(
        "  {:<18} {:>12} {:>14}\n",
        "", "strategy", "buy-and-hold"
    ));
    for (name, ours, theirs) in [
        (
            "total return",
            percent(Some(s.total_return)),
            percent(Some(b.total_return)),
        ),
        ("CAGR", percent(s.cagr), percent(b.cagr)),
        ("Sharpe", ratio(s.sharpe), ratio(b.sharpe)),
        ("Sortino", ratio(s.sortino), ratio(b.sortino)),
        ("Calmar", ratio(s.calmar), ratio(b.calmar)),
        (
            "max drawdown",
            percent(Some(s.max_drawdown)),
            percent(Some(b.max_drawdown)),
        ),
        (
            "drawdown length",
            crate::util::time::human(std::time::Duration::from_millis(s.max_drawdown_ms as u64)),
            crate::util::time::human(std::time::Duration::from_millis(b.max_drawdown_ms as u64)),
        ),
    ] {
        text.push_str(&format!("  {name:<18} {ours:>12} {theirs:>14}\n"));
    }
    let trades = &summary.trades;
    text.push_str(&format!(
        "  trades {} ({} long, {} short), win rate {}, profit factor {}, expectancy {}, average {} bars\n",
        trades.trades,
        trades.long,
        trades.short,
        trades
            .win_rate
            .map_or("n/a".to_owned(), |v| format!("{:.1}%", v * 100.0)),
        ratio(trades.profit_factor),
        trades.expectancy.map_or("n/a".to_owned(), |v| format!("{v:+.2}")),
        trades.average_bars.map_or("n/a".to_owned(), |v| format!("{v:.1}")),
    ));
    text.push_str(&format!(
        "  exposure {:.1}% of bars, fees paid {:.2}, funding paid {:.2}\n",
        summary.exposure * 100.0,
        summary.fees_paid,
        summary.funding_paid
    ));
    let before = &summary.before_fees;
    text.push_str(&format!(
        "  before fees: P&L {:+.2}, {} per trade (t = {})\n",
        before.pnl,
        before.mean.map_or("n/a".to_owned(), |v| format!("{v:+.2}")),
        before
            .t_stat
            .map_or("n/a".to_owned(), |v| format!("{v:.2}")),
    ));
    let skipped = &summary.skipped;
    text.push_str(&format!(
        "  signals not taken: {} at capacity, {} too small, {} without a next bar, {} on the last bar, {} daily loss limit, {} correlation cap, {} without a size\n",
        skipped.capacity,
        skipped.too_small,
        skipped.no_bar,
        skipped.last_bar,
        skipped.daily_loss_limit,
        skipped.correlation,
        skipped.sizing
    ));
    if let Some(outcomes) = &summary.outcomes {
        text.push_str(&outcome_lines(outcomes));
    }
    text.push_str(&format!("  verdict: {}\n", summary.verdict));
    text
}

/// The bootstrap's figures, for `metrics.txt`.
fn outcome_lines(outcomes: &crate::backtest::outcomes::Outcomes) -> String {
    let percent = |value: f64| format!("{:+.1}%", value * 100.0);
    let spread = |p: &crate::backtest::outcomes::Percentiles, show: &dyn Fn(f64) -> String| {
        format!("{} / {} / {}", show(p.p5), show(p.p50), show(p.p95))
    };
    let loss =
        |value: Option<f64>| value.map_or("n/a".to_owned(), |v| format!("{:.2}%", v * 100.0));
    let mut text = format!(
        "  outcomes ({} bootstrap paths, blocks of {} bars on average, seed {}), 5th / 50th / 95th percentile:\n",
        outcomes.settings.paths, outcomes.settings.block, outcomes.settings.seed
    );
    text.push_str(&format!(
        "    total return {}; max drawdown {}; Sharpe {}\n",
        spread(&outcomes.total_return, &percent),
        spread(&outcomes.max_drawdown, &percent),
        outcomes
            .sharpe
            .as_ref()
            .map_or("n/a".to_owned(), |sharpe| spread(sharpe, &|v| format!(
                "{v:.2}"
            )))
    ));
    let levels: Vec<String> = outcomes
        .drawdown_worse_than
        .iter()
        .map(|(level, share)| format!("{:.0}% {:.1}%", level * 100.0, share * 100.0))
        .collect();
    text.push_str(&format!(
        "    chance of a drawdown worse than {}; of ending below the start {:.1}%\n",
        levels.join(", "),
        outcomes.ending_below_start * 100.0
    ));
    for (name, risk) in [
        ("historical", &outcomes.historical),
        ("bootstrap", &outcomes.bootstrap),
    ] {
        text.push_str(&format!(
            "    1-day VaR / ES, {name} ({} days): 95% {} / {}, 99% {} / {}\n",
            risk.days,
            loss(risk.var_95),
            loss(risk.es_95),
            loss(risk.var_99),
            loss(risk.es_99)
        ));
    }
    text
}

fn write_trades(
    context: &StageContext,
    market: &Market,
    simulation: &Simulation,
) -> Result<(), StageError> {
    let batch = trades_batch(market, &simulation.trades, ExitReason::End.word())?;
    crate::kinds::write_parquet(&context.output_dir.join(TRADES_FILE), &batch)
}

/// The trades as `trades.parquet` holds them; a trade the grid's end closed says `end_word`
/// (`end` in a backtest; `open` in the paper portfolio, where the grid ends at the newest bar).
pub fn trades_batch(
    market: &Market,
    trades: &[engine::Trade],
    end_word: &str,
) -> Result<RecordBatch, StageError> {
    let floats = |f: &dyn Fn(&engine::Trade) -> f64| -> ArrayRef {
        Arc::new(trades.iter().map(f).collect::<Float64Array>())
    };
    let times = |f: &dyn Fn(&engine::Trade) -> usize| -> ArrayRef {
        Arc::new(
            trades
                .iter()
                .map(|t| market.times[f(t)])
                .collect::<Int64Array>(),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            trades
                .iter()
                .map(|t| market.symbols[t.symbol as usize].as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            trades
                .iter()
                .map(|t| if t.side > 0 { "long" } else { "short" }),
        )),
        times(&|t| t.entry_bar),
        floats(&|t| t.entry_price),
        times(&|t| t.exit_bar),
        floats(&|t| t.exit_price),
        floats(&|t| t.units),
        floats(&|t| t.units * t.entry_price),
        floats(&|t| t.fees),
        floats(&|t| t.funding),
        floats(&|t| t.pnl),
        floats(&|t| t.pnl / (t.units * t.entry_price)),
        Arc::new(
            trades
                .iter()
                .map(|t| (t.exit_bar - t.entry_bar) as i64)
                .collect::<Int64Array>(),
        ),
        Arc::new(StringArray::from_iter_values(trades.iter().map(
            |t| match t.exit_reason {
                ExitReason::End => end_word,
                reason => reason.word(),
            },
        ))),
    ];
    RecordBatch::try_new(trades_schema(), columns).map_err(StageError::failed)
}

fn write_equity(
    context: &StageContext,
    market: &Market,
    simulation: &Simulation,
    benchmark: &[f64],
    capital: f64,
) -> Result<(), StageError> {
    let drawdown = crate::backtest::metrics::drawdown_curve(&simulation.equity, capital);
    let benchmark_drawdown = crate::backtest::metrics::drawdown_curve(benchmark, capital);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(market.times.clone())),
        Arc::new(Float64Array::from(simulation.equity.clone())),
        Arc::new(Float64Array::from(drawdown)),
        Arc::new(UInt32Array::from(simulation.positions.clone())),
        Arc::new(Float64Array::from(simulation.exposure.clone())),
        Arc::new(Float64Array::from(benchmark.to_vec())),
        Arc::new(Float64Array::from(benchmark_drawdown)),
        Arc::new(Float64Array::from(simulation.fees_paid.clone())),
        Arc::new(Float64Array::from(simulation.slippage_paid.clone())),
    ];
    let batch = RecordBatch::try_new(equity_schema(), columns).map_err(StageError::failed)?;
    crate::kinds::write_parquet(&context.output_dir.join(EQUITY_FILE), &batch)
}

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        self.all_params()
    }

    fn reports(&self) -> &'static [&'static str] {
        &[REPORT_FILE]
    }

    /// Checks the predictions table's probability columns and the presence of klines.
    fn output_shape<'a>(
        &'a self,
        _stage_id: &'a str,
        inputs: &'a [(String, OutputShape)],
    ) -> BoxFuture<'a, Result<OutputShape, ShapeError>> {
        Box::pin(async move {
            // An input that cannot say (a `command`) may hold any table: check what is known.
            let (tables, unknown) = crate::engine::stage::known_tables(inputs);
            let shape = OutputShape::Tables(vec![
                ShapeTable {
                    names: vec!["trades".to_owned()],
                    schema: trades_schema(),
                },
                ShapeTable {
                    names: vec!["equity".to_owned()],
                    schema: equity_schema(),
                },
            ]);
            let find = |name: &str| {
                tables
                    .iter()
                    .find(|table| table.names.iter().any(|candidate| candidate == name))
            };
            let params = &self.params;
            let Some(predictions) = find(&params.predictions_table) else {
                if unknown {
                    return Ok(shape);
                }
                return Err(ShapeError::Param(ParamError::new(
                    YamlPath::root().key("predictions_table"),
                    format!(
                        "no input provides a table `{}`: add the train stage to `needs`",
                        params.predictions_table
                    ),
                )));
            };
            if find(crate::sql::KLINES_TABLE).is_none() && !unknown {
                return Err(ShapeError::Param(ParamError::new(
                    YamlPath::root().key("interval"),
                    "no input provides the `klines` table the prices come from: add the validate stage to `needs`",
                )));
            }
            let mut wanted = vec![("long_class", &params.entry.long_class)];
            if params.entry.short {
                wanted.push(("short_class", &params.entry.short_class));
            }
            for (key, class) in wanted {
                let column = format!("p_{class}");
                if predictions.schema.field_with_name(&column).is_err() {
                    let known: Vec<String> = predictions
                        .schema
                        .fields()
                        .iter()
                        .filter_map(|field| {
                            field.name().strip_prefix("p_").map(|c| format!("`{c}`"))
                        })
                        .collect();
                    return Err(ShapeError::Param(ParamError::new(
                        YamlPath::root().key("entry").key(key),
                        format!(
                            "`{}` has no column `{column}`: its classes are {}",
                            params.predictions_table,
                            known.join(", ")
                        ),
                    )));
                }
            }
            Ok(shape)
        })
    }

    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(self.execute(context))
    }
}

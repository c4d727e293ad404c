//! `runs/<run-id>/report.html`: one self-contained page (inline CSS and SVG, no script, nothing
//! fetched) with the run, validation, features, model and backtest sections.

use std::fmt::Write;

use super::data::{Backtest, Features, Model, Paper, ReportData, Sweep, Validation};
use super::format::{MONTHS, duration_ms, figure, ratio, share, signed_percent};
use super::svg::{Series, Span, escape, time_chart, timeline};
use crate::engine::run_record::{RunRecord, StageStatus};

const STRATEGY: &str = "#1f6feb";
const BENCHMARK: &str = "#d97706";
const LOSS: &str = "#dc2626";

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;color:#1f2328;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.meta{color:#59636e}.banner{background:#fff1f0;border:2px solid #dc2626;color:#991b1b;font-weight:600;padding:10px 14px;margin:12px 0;border-radius:6px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:right}th{background:#f6f8fa}
td.l,th.l{text-align:left}.pass{color:#1a7f37}.fail{color:#cf222e;font-weight:600}.verdict{font-weight:600;margin:6px 0}
svg.chart{display:block;margin:8px 0;max-width:100%;height:auto}svg .grid{stroke:#eaeef2}svg .zero{stroke:#8c959f}
svg .axis,svg .legend{font-size:11px;fill:#59636e}svg .title{font-size:13px;font-weight:600;fill:#1f2328}
";

/// The whole page.
pub fn render(record: &RunRecord, data: &ReportData) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let _ = write!(
        page,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>asterflow {} {}</title><style>{STYLE}</style></head><body>",
        escape(&record.pipeline),
        escape(&record.run_id)
    );
    let _ = write!(
        page,
        "<h1>Pipeline <code>{}</code></h1><div class=\"meta\">run {} · {} · started {} · {} · {}</div>",
        escape(&record.pipeline),
        escape(&record.run_id),
        escape(&format!("{:?}", record.status).to_lowercase()),
        escape(&record.started_at),
        duration_ms(record.duration_ms.unwrap_or(0)),
        escape(&record.pipeline_file)
    );
    if data.synthetic {
        let _ = write!(
            page,
            "<div class=\"banner\">{}</div>",
            escape(crate::provenance::SYNTHETIC_BANNER)
        );
    }
    // Results first: what a reader opens the report for; then how the run got there.
    if let Some(sweep) = &data.sweep {
        sweep_section(&mut page, sweep);
    }
    if let Some(backtest) = &data.backtest {
        backtest_section(&mut page, backtest);
    }
    if let Some(model) = &data.model {
        model_section(&mut page, model);
    }
    if let Some(paper) = &data.paper {
        paper_section(&mut page, paper);
    }
    run_section(&mut page, record);
    if let Some(validation) = &data.validation {
        validation_section(&mut page, validation);
    }
    if let Some(features) = &data.features {
        features_section(&mut page, features);
    }
    page.push_str("</body></html>\n");
    page
}

fn status_color(status: StageStatus) -> &'static str {
    match status {
        StageStatus::Ran => "#2da44e",
        StageStatus::Cached => "#9ca3af",
        StageStatus::Downloaded => "#60a5fa",
        StageStatus::Reused => "#a78bfa",
        StageStatus::Skipped => "#d0d7de",
        StageStatus::Failed => LOSS,
    }
}

fn run_section(page: &mut String, record: &RunRecord) {
    page.push_str("<h2>Run</h2><table><tr><th class=\"l\">stage</th><th class=\"l\">kind</th><th class=\"l\">status</th><th>duration</th><th class=\"l\">reason</th></tr>");
    for stage in &record.stages {
        let _ = write!(
            page,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            escape(&stage.id),
            escape(&stage.kind),
            stage.status.word(),
            duration_ms(stage.duration_ms),
            escape(stage.error.as_deref().unwrap_or(&stage.reason))
        );
    }
    page.push_str("</table>");
    page.push_str(&run_timeline(record));
}

/// A run's stages as bars on a time axis from its start to its end, coloured by status.
pub fn run_timeline(record: &RunRecord) -> String {
    let spans: Vec<Span<'_>> = record
        .stages
        .iter()
        .map(|stage| Span {
            label: &stage.id,
            start_ms: stage
                .started_at_ms
                .map_or(0, |start| start.saturating_sub(record.started_at_ms)),
            duration_ms: stage.duration_ms,
            color: status_color(stage.status),
            note: format!("{} {}", stage.status.word(), duration_ms(stage.duration_ms)),
        })
        .collect();
    timeline(&spans, record.duration_ms.unwrap_or(0), 1000.0)
}

fn validation_section(page: &mut String, validation: &Validation) {
    let _ = write!(
        page,
        "<h2>Validation</h2><p>{} datasets passed, {} quarantined; {} symbols passed.</p>",
        validation.datasets_passed, validation.datasets_quarantined, validation.symbols_passed
    );
    page.push_str("<table><tr><th class=\"l\">symbol</th><th class=\"l\">interval</th><th class=\"l\">source</th><th>rows</th><th>quality</th><th class=\"l\">verdict</th></tr>");
    for row in &validation.datasets {
        let verdict = if row.passed {
            "<span class=\"pass\">passed</span>".to_owned()
        } else {
            format!(
                "<span class=\"fail\">quarantined</span>: {}",
                escape(&row.failures.join("; "))
            )
        };
        let _ = write!(
            page,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{:.3}</td><td class=\"l\">{verdict}</td></tr>",
            escape(&row.symbol),
            escape(&row.interval),
            escape(&row.source),
            row.rows,
            row.score
        );
    }
    page.push_str("</table>");
}

fn features_section(page: &mut String, features: &Features) {
    let span = match (features.from_ms, features.to_ms) {
        (Some(from), Some(to)) => format!(
            ", {} to {}",
            crate::util::time::rfc3339(from.max(0) as u64),
            crate::util::time::rfc3339(to.max(0) as u64)
        ),
        _ => String::new(),
    };
    let _ = write!(
        page,
        "<h2>Features</h2><p><code>{}</code>: {} rows, {} symbols{span}, {} numeric columns.</p>",
        escape(&features.table),
        features.rows,
        features.symbols,
        features.columns.len()
    );
    page.push_str("<table><tr><th class=\"l\">column</th><th>values</th><th>nulls</th><th>mean</th><th>std</th><th>min</th><th>max</th></tr>");
    for column in &features.columns {
        let _ = write!(
            page,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&column.name),
            column.values,
            column.nulls,
            figure(column.mean),
            figure(column.std),
            figure(column.min),
            figure(column.max)
        );
    }
    page.push_str("</table>");
}

/// A sweep: the verdict, the selection correction with its inputs, every member's equity faint
/// behind the winner's, and the leaderboard.
fn sweep_section(page: &mut String, sweep: &Sweep) {
    let c = &sweep.comparison;
    let _ = write!(
        page,
        "<h2>Sweep: {} members</h2><p class=\"verdict\"><b>{}</b></p>",
        c.members,
        escape(&c.verdict)
    );
    selection_paragraphs(page, c);
    let series: Vec<Series<'_>> = sweep
        .curves
        .iter()
        .map(|curve| {
            let winner = curve.member == c.winner;
            Series {
                name: if winner { "winner" } else { &curve.member },
                color: if winner { STRATEGY } else { "#59636e" },
                x: &curve.time,
                y: &curve.equity,
                dashed: false,
                filled: false,
                faint: !winner,
            }
        })
        .rev()
        .collect();
    page.push_str(&time_chart(
        "Equity of every member",
        1000.0,
        320.0,
        &series,
        &|v| figure(Some(v)),
    ));
    leaderboard_table(page, c);
}

/// The Deflated Sharpe Ratio and the Probability of Backtest Overfitting of a sweep, with their
/// inputs, in words.
pub fn selection_paragraphs(page: &mut String, c: &crate::sweep::Summary) {
    if let Some(d) = &c.deflated {
        let _ = write!(
            page,
            "<p>Deflated Sharpe Ratio {:.3}: the winner's per-bar Sharpe {:.4} against {:.4}, the best that N = {} members would show by luck (variance of their Sharpes V = {:.3e}), over T = {} bars with skewness {:.2} and kurtosis {:.2}.</p>",
            d.dsr,
            d.sharpe,
            d.expected_max,
            d.trials,
            d.variance,
            d.periods,
            d.skewness,
            d.kurtosis
        );
    }
    match &c.overfitting {
        Some(o) => {
            let _ = write!(
                page,
                "<p>Probability of Backtest Overfitting {:.3}: over {} splits of S = {} blocks of {} bars into halves, the share in which the in-sample best ranks at or below the median out of sample.</p>",
                o.pbo, o.splits, o.blocks, o.block_periods
            );
        }
        None => page.push_str("<p>Probability of Backtest Overfitting: n/a (fewer than two members or too short a track).</p>"),
    }
}

/// A sweep's leaderboard: the first 40 members, the rest counted.
pub fn leaderboard_table(page: &mut String, c: &crate::sweep::Summary) {
    page.push_str("<table><tr><th>rank</th><th class=\"l\">member</th><th>Sharpe</th><th>return</th><th>max drawdown</th><th>trades</th><th>t before fees</th><th>balanced accuracy</th><th>baseline</th></tr>");
    for row in c.leaderboard.iter().take(40) {
        let _ = write!(
            page,
            "<tr><td>{}</td><td class=\"l\"><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            row.rank,
            escape(&row.member),
            ratio(row.sharpe),
            signed_percent(Some(row.total_return)),
            signed_percent(Some(row.max_drawdown)),
            row.trades,
            ratio(row.t_before_fees),
            ratio(row.balanced_accuracy),
            ratio(row.baseline_balanced_accuracy)
        );
    }
    page.push_str("</table>");
    if c.leaderboard.len() > 40 {
        let _ = write!(
            page,
            "<p>{} more in leaderboard.csv.</p>",
            c.leaderboard.len() - 40
        );
    }
}

fn paper_section(page: &mut String, paper: &Paper) {
    let summary = &paper.summary;
    let ledger = &summary.ledger;
    let _ = write!(
        page,
        "<h2>Paper trading</h2><p>Signals at {} from the model trained to {}: {} long, {} short, {} flat. Paper book <code>{}</code>: {} paper trades, {} closed (mean net return {}, gross {}, hit rate {}), {} open, {} without prices.</p>",
        escape(&summary.bar),
        escape(&summary.model_trained_to),
        summary.long,
        summary.short,
        summary.flat,
        escape(&summary.book),
        ledger.signals,
        ledger.closed,
        signed_percent(ledger.mean_net_return),
        signed_percent(ledger.mean_gross_return),
        share(ledger.hit_rate),
        ledger.open,
        ledger.no_price
    );
    if let Some(portfolio) = &summary.portfolio {
        let _ = write!(
            page,
            "<p>Paper portfolio, the book as one account under the backtest's rules ({}): {} trades closed (hit rate {}), {} open, {} waiting for the next open; equity {:.2} ({}, max drawdown {}), fees {:.2}, funding {:.2}; {}.</p>",
            escape(&portfolio.rules),
            portfolio.closed,
            share(portfolio.hit_rate),
            portfolio.open,
            portfolio.pending,
            portfolio.equity,
            signed_percent(Some(portfolio.total_return)),
            signed_percent(Some(portfolio.max_drawdown)),
            portfolio.fees,
            portfolio.funding,
            escape(&crate::paper::portfolio::skipped_words(&portfolio.skipped))
        );
    }
    page.push_str("<table><tr><th class=\"l\">symbol</th><th class=\"l\">signal</th>");
    for class in &paper.classes {
        let _ = write!(page, "<th>P({})</th>", escape(class));
    }
    page.push_str("</tr>");
    for signal in &paper.latest {
        let _ = write!(
            page,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td>",
            escape(&signal.symbol),
            escape(&signal.side)
        );
        for p in &signal.probabilities {
            let _ = write!(page, "<td>{p:.3}</td>");
        }
        page.push_str("</tr>");
    }
    page.push_str("</table>");
}

fn model_section(page: &mut String, model: &Model) {
    let _ = write!(
        page,
        "<h2>Model</h2><p>{} on {}, {} rows, {} walk-forward folds (purged, embargoed), scored out of sample beside the majority-class baseline.</p><p class=\"verdict\">{}</p>",
        escape(&model.model),
        escape(&model.device),
        model.rows,
        model.folds,
        escape(&model.verdict)
    );
    let (m, b) = (&model.metrics, &model.baseline);
    page.push_str("<table><tr><th class=\"l\"></th><th>model</th><th>baseline</th></tr>");
    for (name, ours, theirs) in [
        ("accuracy", m.accuracy, b.accuracy),
        (
            "balanced accuracy",
            m.balanced_accuracy,
            b.balanced_accuracy,
        ),
        ("log loss", m.log_loss, b.log_loss),
    ] {
        let _ = write!(
            page,
            "<tr><td class=\"l\">{name}</td><td>{ours:.4}</td><td>{theirs:.4}</td></tr>"
        );
    }
    for (ours, theirs) in m.per_class.iter().zip(&b.per_class) {
        let _ = write!(
            page,
            "<tr><td class=\"l\">{} precision / recall / F1 (n={})</td><td>{:.2} / {:.2} / {:.2}</td><td>{:.2} / {:.2} / {:.2}</td></tr>",
            escape(&ours.class),
            ours.support,
            ours.precision,
            ours.recall,
            ours.f1,
            theirs.precision,
            theirs.recall,
            theirs.f1
        );
    }
    page.push_str("</table><p>Confusion matrix (rows: true class, columns: predicted):</p><table><tr><th></th>");
    for class in &model.classes {
        let _ = write!(page, "<th>{}</th>", escape(class));
    }
    page.push_str("</tr>");
    for (class, row) in model.classes.iter().zip(&m.confusion) {
        let total: usize = row.iter().sum();
        let _ = write!(page, "<tr><th>{}</th>", escape(class));
        for &count in row {
            let shade = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
            let _ = write!(
                page,
                "<td style=\"background:rgba(31,111,235,{:.2})\">{count}</td>",
                shade * 0.6
            );
        }
        page.push_str("</tr>");
    }
    page.push_str("</table>");
    importance_chart(page, &model.importance);
}

/// The model's feature importances as horizontal bars, the 20 largest (gain for trees, the
/// weights' magnitudes for the linear models and the mlp).
fn importance_chart(page: &mut String, importance: &[(String, f64)]) {
    let shown: Vec<&(String, f64)> = importance.iter().take(20).collect();
    let Some(top) = shown.iter().map(|(_, v)| *v).reduce(f64::max) else {
        return;
    };
    if top <= 0.0 {
        return;
    }
    let (label, bar, row) = (220.0, 520.0, 18.0);
    let height = row * shown.len() as f64 + 30.0;
    let _ = write!(
        page,
        "<svg class=\"chart\" width=\"{:.0}\" height=\"{height:.0}\" role=\"img\" aria-label=\"Feature importance\"><text class=\"title\" x=\"0\" y=\"14\">Feature importance (share of the model's total)</text>",
        label + bar + 70.0
    );
    for (index, (feature, value)) in shown.iter().enumerate() {
        let y = 24.0 + index as f64 * row;
        let width = bar * value / top;
        let _ = write!(
            page,
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect x=\"{label:.0}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{:.1}\" fill=\"#1f6feb\"/><text x=\"{:.1}\" y=\"{:.1}\">{:.1}%</text>",
            label - 8.0,
            y + row * 0.7,
            escape(feature),
            row - 4.0,
            label + width + 6.0,
            y + row * 0.7,
            value * 100.0
        );
    }
    page.push_str("</svg>");
    if importance.len() > shown.len() {
        let _ = write!(
            page,
            "<p>{} more features in metrics.json.</p>",
            importance.len() - shown.len()
        );
    }
}

fn backtest_section(page: &mut String, backtest: &Backtest) {
    let summary = &backtest.summary;
    let _ = write!(
        page,
        "<h2>Backtest</h2><p>{} symbols, {} bars from {} to {}; out-of-sample signals, fills at the next open, fees and slippage on every fill.</p><p class=\"verdict\">{}</p>",
        summary.symbols,
        summary.bars,
        escape(&summary.from),
        escape(&summary.to),
        escape(&summary.verdict)
    );
    let (s, b) = (&summary.strategy, &summary.buy_and_hold);
    page.push_str("<table><tr><th class=\"l\"></th><th>strategy</th><th>buy-and-hold</th></tr>");
    let rows = [
        (
            "final equity",
            figure(Some(s.final_equity)),
            figure(Some(b.final_equity)),
        ),
        (
            "total return",
            signed_percent(Some(s.total_return)),
            signed_percent(Some(b.total_return)),
        ),
        ("CAGR", signed_percent(s.cagr), signed_percent(b.cagr)),
        ("Sharpe", ratio(s.sharpe), ratio(b.sharpe)),
        ("Sortino", ratio(s.sortino), ratio(b.sortino)),
        ("Calmar", ratio(s.calmar), ratio(b.calmar)),
        (
            "max drawdown",
            signed_percent(Some(s.max_drawdown)),
            signed_percent(Some(b.max_drawdown)),
        ),
        (
            "longest drawdown",
            duration_ms(s.max_drawdown_ms.max(0) as u64),
            duration_ms(b.max_drawdown_ms.max(0) as u64),
        ),
    ];
    for (name, ours, theirs) in rows {
        let _ = write!(
            page,
            "<tr><td class=\"l\">{name}</td><td>{ours}</td><td>{theirs}</td></tr>"
        );
    }
    page.push_str("</table>");
    let trades = &summary.trades;
    let _ = write!(
        page,
        "<table><tr><th>trades</th><th>long / short</th><th>win rate</th><th>profit factor</th><th>expectancy</th><th>average bars</th><th>exposure</th><th>fees paid</th><th>funding paid</th><th>P&amp;L before fees (t)</th></tr><tr><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td></tr></table>",
        trades.trades,
        trades.long,
        trades.short,
        share(trades.win_rate),
        ratio(trades.profit_factor),
        figure(trades.expectancy),
        figure(trades.average_bars),
        share(Some(summary.exposure)),
        figure(Some(summary.fees_paid)),
        figure(Some(summary.funding_paid)),
        figure(Some(summary.before_fees.pnl)),
        ratio(summary.before_fees.t_stat)
    );
    let curve = &backtest.curve;
    page.push_str(&time_chart(
        "Equity",
        1000.0,
        320.0,
        &[
            Series {
                name: "strategy",
                color: STRATEGY,
                x: &curve.time,
                y: &curve.equity,
                dashed: false,
                filled: false,
                faint: false,
            },
            Series {
                name: "buy-and-hold",
                color: BENCHMARK,
                x: &curve.time,
                y: &curve.buy_and_hold,
                dashed: true,
                filled: false,
                faint: false,
            },
        ],
        &|v| figure(Some(v)),
    ));
    page.push_str(&time_chart(
        "Drawdown",
        1000.0,
        200.0,
        &[
            Series {
                name: "strategy",
                color: LOSS,
                x: &curve.time,
                y: &curve.drawdown,
                dashed: false,
                filled: true,
                faint: false,
            },
            Series {
                name: "buy-and-hold",
                color: BENCHMARK,
                x: &curve.time,
                y: &curve.buy_and_hold_drawdown,
                dashed: true,
                filled: false,
                faint: false,
            },
        ],
        &|v| format!("{:.0}%", v * 100.0),
    ));
    if let Some(outcomes) = &summary.outcomes {
        outcome_section(
            page,
            outcomes,
            curve.time.first().copied().unwrap_or(0),
            summary.periods_per_year,
        );
    }
    monthly_table(page, backtest);
}

/// The bootstrap's distribution of outcomes: a fan of equity paths, the deepest drawdowns'
/// histogram, and the figures with value at risk.
fn outcome_section(
    page: &mut String,
    outcomes: &crate::backtest::outcomes::Outcomes,
    start_ms: i64,
    periods_per_year: f64,
) {
    let settings = &outcomes.settings;
    let _ = write!(
        page,
        "<h3>Outcomes the history allows</h3><p>{} paths of a stationary block bootstrap of the strategy's per-bar returns (blocks of {} bars on average, seed {}): the same returns in other orders, volatility clusters kept.</p>",
        settings.paths, settings.block, settings.seed
    );
    let bar_ms = (365.0 * 86_400_000.0 / periods_per_year) as i64;
    let x: Vec<i64> = outcomes
        .fan
        .iter()
        .map(|(bar, _)| start_ms + *bar as i64 * bar_ms)
        .collect();
    let band = |k: usize| -> Vec<f64> { outcomes.fan.iter().map(|(_, q)| q[k]).collect() };
    let bands = [band(0), band(1), band(2), band(3), band(4)];
    let names = [
        "5th percentile",
        "25th",
        "median path",
        "75th",
        "95th percentile",
    ];
    let series: Vec<Series<'_>> = bands
        .iter()
        .zip(names)
        .enumerate()
        .map(|(k, (y, name))| Series {
            name,
            color: STRATEGY,
            x: &x,
            y,
            dashed: k != 2,
            filled: false,
            faint: k == 1 || k == 3,
        })
        .collect();
    page.push_str(&time_chart(
        "Equity paths (multiple of the start)",
        1000.0,
        280.0,
        &series,
        &|v| format!("{v:.2}x"),
    ));
    page.push_str(&super::svg::histogram(
        "Deepest drawdown of each path",
        1000.0,
        200.0,
        &outcomes.drawdown_histogram,
        LOSS,
        &|v| format!("{:.0}%", v * 100.0),
    ));
    let spread = |p: &crate::backtest::outcomes::Percentiles, show: &dyn Fn(f64) -> String| {
        format!(
            "<td>{}</td><td>{}</td><td>{}</td>",
            show(p.p5),
            show(p.p50),
            show(p.p95)
        )
    };
    let percent = |v: f64| format!("{:+.1}%", v * 100.0);
    let _ = write!(
        page,
        "<table><tr><th class=\"l\">over the paths</th><th>5th</th><th>50th</th><th>95th</th></tr><tr><td class=\"l\">total return</td>{}</tr><tr><td class=\"l\">max drawdown</td>{}</tr><tr><td class=\"l\">Sharpe</td>{}</tr></table>",
        spread(&outcomes.total_return, &percent),
        spread(&outcomes.max_drawdown, &percent),
        outcomes.sharpe.as_ref().map_or(
            "<td>n/a</td><td>n/a</td><td>n/a</td>".to_owned(),
            |sharpe| spread(sharpe, &|v| format!("{v:.2}"))
        )
    );
    let chances: Vec<String> = outcomes
        .drawdown_worse_than
        .iter()
        .map(|(level, share)| format!("{:.0}%: {:.1}%", level * 100.0, share * 100.0))
        .collect();
    let _ = write!(
        page,
        "<p>Chance of a drawdown worse than {}; of ending below the start: {:.1}%.</p>",
        chances.join(", "),
        outcomes.ending_below_start * 100.0
    );
    let loss = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{:.2}%", v * 100.0));
    page.push_str("<table><tr><th class=\"l\">1-day loss</th><th>VaR 95%</th><th>ES 95%</th><th>VaR 99%</th><th>ES 99%</th><th>days</th></tr>");
    for (name, risk) in [
        ("historical", &outcomes.historical),
        ("bootstrap", &outcomes.bootstrap),
    ] {
        let _ = write!(
            page,
            "<tr><td class=\"l\">{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            loss(risk.var_95),
            loss(risk.es_95),
            loss(risk.var_99),
            loss(risk.es_99),
            risk.days
        );
    }
    page.push_str("</table>");
}

fn monthly_table(page: &mut String, backtest: &Backtest) {
    if backtest.monthly.is_empty() {
        return;
    }
    page.push_str("<p>Monthly returns (strategy, and buy-and-hold below it):</p><table><tr><th class=\"l\">year</th>");
    for month in MONTHS {
        let _ = write!(page, "<th>{month}</th>");
    }
    page.push_str("</tr>");
    let mut years: Vec<i32> = backtest.monthly.iter().map(|m| m.year).collect();
    years.dedup();
    for year in years {
        for (label, pick) in [
            (
                "",
                &(|m: &super::data::Month| m.strategy) as &dyn Fn(&super::data::Month) -> f64,
            ),
            (" buy-and-hold", &|m: &super::data::Month| m.buy_and_hold),
        ] {
            let _ = write!(page, "<tr><th class=\"l\">{year}{label}</th>");
            for month in 1..=12 {
                match backtest
                    .monthly
                    .iter()
                    .find(|m| m.year == year && m.month == month)
                {
                    Some(entry) => {
                        let value = pick(entry);
                        let (red, green) = if value < 0.0 { (220, 38) } else { (26, 127) };
                        let alpha = (value.abs() * 4.0).min(0.6);
                        let _ = write!(
                            page,
                            "<td style=\"background:rgba({red},{green},55,{alpha:.2})\">{}</td>",
                            signed_percent(Some(value))
                        );
                    }
                    None => page.push_str("<td></td>"),
                }
            }
            page.push_str("</tr>");
        }
    }
    page.push_str("</table>");
}

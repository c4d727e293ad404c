//! `runs/<run-id>/report.md` for terminals and CI logs, and the key figures `asterflow run`
//! prints when it ends.

use std::fmt::Write;

use super::data::ReportData;
use super::format::{duration_ms, figure, ratio, share, signed_percent};
use crate::engine::run_record::RunRecord;

/// Markdown text: tables only, no pictures.
pub fn render(record: &RunRecord, data: &ReportData) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# asterflow run {} of `{}`\n\n{} · started {} · {}\n",
        record.run_id,
        record.pipeline,
        format!("{:?}", record.status).to_lowercase(),
        record.started_at,
        duration_ms(record.duration_ms.unwrap_or(0))
    );
    if data.synthetic {
        let _ = writeln!(text, "> **{}**\n", crate::provenance::SYNTHETIC_BANNER);
    }
    text.push_str("## Run\n\n| stage | kind | status | duration |\n|---|---|---|---:|\n");
    for stage in &record.stages {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} |",
            cell(&stage.id),
            cell(&stage.kind),
            stage.status.word(),
            duration_ms(stage.duration_ms)
        );
    }
    if let Some(sweep) = &data.sweep {
        let c = &sweep.comparison;
        let _ = writeln!(
            text,
            "\n## Sweep\n\n**{}**\n\n| rank | member | Sharpe | return | max drawdown | trades | t before fees |\n|---:|---|---:|---:|---:|---:|---:|",
            c.verdict
        );
        for row in c.leaderboard.iter().take(20) {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.rank,
                cell(&row.member),
                ratio(row.sharpe),
                signed_percent(Some(row.total_return)),
                signed_percent(Some(row.max_drawdown)),
                row.trades,
                ratio(row.t_before_fees)
            );
        }
    }
    if let Some(validation) = &data.validation {
        let _ = writeln!(
            text,
            "\n## Validation\n\n{} datasets passed, {} quarantined; {} symbols passed.",
            validation.datasets_passed, validation.datasets_quarantined, validation.symbols_passed
        );
        for row in validation.datasets.iter().filter(|row| !row.passed) {
            let _ = writeln!(
                text,
                "- quarantined {} {}: {}",
                cell(&row.symbol),
                cell(&row.interval),
                cell(&row.failures.join("; "))
            );
        }
    }
    if let Some(features) = &data.features {
        let _ = writeln!(
            text,
            "\n## Features\n\n`{}`: {} rows, {} symbols, {} numeric columns.",
            features.table,
            features.rows,
            features.symbols,
            features.columns.len()
        );
    }
    if let Some(model) = &data.model {
        let (m, b) = (&model.metrics, &model.baseline);
        let _ = writeln!(
            text,
            "\n## Model\n\n{} on {}, {} rows, {} folds: **{}**\n\n| | model | baseline |\n|---|---:|---:|\n| accuracy | {:.4} | {:.4} |\n| balanced accuracy | {:.4} | {:.4} |\n| log loss | {:.4} | {:.4} |",
            model.model,
            model.device,
            model.rows,
            model.folds,
            cell(&model.verdict),
            m.accuracy,
            b.accuracy,
            m.balanced_accuracy,
            b.balanced_accuracy,
            m.log_loss,
            b.log_loss
        );
    }
    if let Some(backtest) = &data.backtest {
        let summary = &backtest.summary;
        let (s, b) = (&summary.strategy, &summary.buy_and_hold);
        let _ = writeln!(
            text,
            "\n## Backtest\n\n{} symbols, {} to {}: **{}**\n\n| | strategy | buy-and-hold |\n|---|---:|---:|\n| total return | {} | {} |\n| CAGR | {} | {} |\n| Sharpe | {} | {} |\n| Sortino | {} | {} |\n| max drawdown | {} | {} |\n\n{} trades, win rate {}, profit factor {}, exposure {}, fees paid {}; before fees P&L {} (t = {}).",
            summary.symbols,
            summary.from,
            summary.to,
            cell(&summary.verdict),
            signed_percent(Some(s.total_return)),
            signed_percent(Some(b.total_return)),
            signed_percent(s.cagr),
            signed_percent(b.cagr),
            ratio(s.sharpe),
            ratio(b.sharpe),
            ratio(s.sortino),
            ratio(b.sortino),
            signed_percent(Some(s.max_drawdown)),
            signed_percent(Some(b.max_drawdown)),
            summary.trades.trades,
            share(summary.trades.win_rate),
            ratio(summary.trades.profit_factor),
            share(Some(summary.exposure)),
            figure(Some(summary.fees_paid)),
            figure(Some(summary.before_fees.pnl)),
            ratio(summary.before_fees.t_stat)
        );
    }
    if let Some(paper) = &data.paper {
        let summary = &paper.summary;
        let _ = writeln!(
            text,
            "\n## Paper trading\n\nSignals at {} (model trained to {}): {} long, {} short, {} flat. Paper book `{}`: {} paper trades, {} closed (mean net {}), {} open.",
            summary.bar,
            summary.model_trained_to,
            summary.long,
            summary.short,
            summary.flat,
            summary.book,
            summary.ledger.signals,
            summary.ledger.closed,
            signed_percent(summary.ledger.mean_net_return),
            summary.ledger.open
        );
        if let Some(portfolio) = &summary.portfolio {
            let _ = writeln!(
                text,
                "\nPaper portfolio ({}): {} closed, {} open, equity {:.2} ({}); {}.",
                portfolio.rules,
                portfolio.closed,
                portfolio.open,
                portfolio.equity,
                signed_percent(Some(portfolio.total_return)),
                crate::paper::portfolio::skipped_words(&portfolio.skipped)
            );
        }
    }
    text
}

/// The lines `asterflow run` ends with.
pub fn key_figures(data: &ReportData) -> Vec<String> {
    let mut lines = Vec::new();
    if data.synthetic {
        lines.push(format!("*** {} ***", crate::provenance::SYNTHETIC_BANNER));
    }
    if let Some(validation) = &data.validation {
        lines.push(format!(
            "validation: {} symbols passed, {} datasets quarantined",
            validation.symbols_passed, validation.datasets_quarantined
        ));
    }
    if let Some(model) = &data.model {
        lines.push(format!(
            "model: balanced accuracy {:.3} vs baseline {:.3}, log loss {:.3} vs {:.3}",
            model.metrics.balanced_accuracy,
            model.baseline.balanced_accuracy,
            model.metrics.log_loss,
            model.baseline.log_loss
        ));
    }
    if let Some(backtest) = &data.backtest {
        let summary = &backtest.summary;
        let (s, b) = (&summary.strategy, &summary.buy_and_hold);
        lines.push(format!(
            "backtest: return {} vs buy-and-hold {}, Sharpe {} vs {}, max drawdown {}, {} trades: {}",
            signed_percent(Some(s.total_return)),
            signed_percent(Some(b.total_return)),
            ratio(s.sharpe),
            ratio(b.sharpe),
            signed_percent(Some(s.max_drawdown)),
            summary.trades.trades,
            summary.verdict
        ));
    }
    lines
}

/// Text safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

//! Proven honest end to end: the shipped pipelines on the null market, where nothing is
//! predictable, and on the planted market, where alts follow BTC's previous bar with beta 0.4
//! (`data/scenarios/{null,planted}.yaml`). The same stages, guards and splits as the demo. On the
//! null market an edge can only come from looking ahead; on the planted one, missing the edge
//! means the pipeline cannot see what it should. Half a year of 1h bars keeps them quick.

use crate::common::{Project, Run};

/// Runs the shipped `pipelines/<name>.yaml` over 180 days instead of 365.
fn run_shipped(name: &str) -> (Project, Run) {
    run_in(crate::common::shipped_project(), name)
}

fn run_in(project: Project, name: &str) -> (Project, Run) {
    let path = format!("pipelines/{name}.yaml");
    let text = std::fs::read_to_string(project.path().join(&path)).unwrap();
    assert!(text.contains("history: 365d"), "{path} changed shape");
    // Half a year, and the CPU: the same figures on every machine.
    assert!(text.contains("device: auto"), "{path} changed shape");
    project.write(
        &path,
        &text
            .replace("history: 365d", "history: 180d")
            .replace("device: auto", "device: cpu"),
    );
    let run = project.run(&["run", &path, "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    (project, run)
}

#[derive(Debug)]
struct Honesty {
    /// Out-of-sample balanced accuracy minus the majority baseline's, over all folds.
    excess: f64,
    /// The largest excess chance alone would plausibly give: four standard errors of a
    /// balanced accuracy whose predictions ignore the truth (recall_c ~ Binomial(n_c, q_c) / n_c,
    /// variance at most 1 / (4 n_c)), and never under two points. The binomial figure treats
    /// rows as independent; neighbouring bars and the assets' shared factor are not, so with
    /// thousands of test rows per class the two-point floor is what applies.
    noise: f64,
    trades: u64,
    before_fees_pnl: f64,
    before_fees_t: f64,
    total_return: f64,
}

fn honesty(project: &Project, run: &Run) -> Honesty {
    let metrics = run.output_json(project, "train", "metrics.json");
    let model = &metrics["overall"]["model"];
    let baseline = &metrics["overall"]["baseline"];
    let excess = model["balanced_accuracy"].as_f64().unwrap()
        - baseline["balanced_accuracy"].as_f64().unwrap();
    let per_class: Vec<f64> = model["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_f64().unwrap())
                .sum()
        })
        .collect();
    assert!(
        per_class.iter().all(|&n| n > 0.0),
        "a class never occurs out of sample: {per_class:?}"
    );
    let classes = per_class.len() as f64;
    let variance: f64 =
        per_class.iter().map(|n| 1.0 / (4.0 * n)).sum::<f64>() / (classes * classes);
    let backtest = run.output_json(project, "backtest", "metrics.json");
    let honesty = Honesty {
        excess,
        noise: (4.0 * variance.sqrt()).max(0.02),
        trades: backtest["trades"]["trades"].as_u64().unwrap(),
        before_fees_pnl: backtest["before_fees"]["pnl"].as_f64().unwrap(),
        before_fees_t: backtest["before_fees"]["t_stat"].as_f64().unwrap(),
        total_return: backtest["strategy"]["total_return"].as_f64().unwrap(),
    };
    eprintln!("{honesty:?}");
    honesty
}

#[test]
fn on_the_null_market_nothing_beats_the_baseline_or_earns_before_fees() {
    let (project, run) = run_shipped("null");
    assert!(run.stderr.contains("SYNTHETIC DATA") || run.stdout.contains("SYNTHETIC DATA"));
    let h = honesty(&project, &run);
    assert!(
        h.excess < h.noise,
        "the model beats the baseline by {:.4} on a market with nothing to predict (noise {:.4}): something looks ahead",
        h.excess,
        h.noise
    );
    assert!(
        h.trades >= 200,
        "too few trades ({}) to test anything",
        h.trades
    );
    assert!(
        h.before_fees_t < 2.5,
        "the backtest earns {:.2} before fees over {} trades (t = {:.2}) on a market with nothing to predict: something looks ahead",
        h.before_fees_pnl,
        h.trades,
        h.before_fees_t
    );
    assert!(h.total_return < 0.0, "fees must show: {}", h.total_return);
}

#[test]
fn on_the_planted_market_the_pipeline_finds_the_edge() {
    let (project, run) = run_shipped("planted");
    let h = honesty(&project, &run);
    assert!(
        h.excess > 1.5 * h.noise,
        "balanced accuracy only {:.4} above the baseline (noise {:.4}): the planted lead-lag effect was missed",
        h.excess,
        h.noise
    );
    assert!(h.trades >= 200, "too few trades ({})", h.trades);
    assert!(
        h.before_fees_pnl > 0.0 && h.before_fees_t > 4.0,
        "before fees: {:.2} (t = {:.2}) over {} trades: the edge does not trade",
        h.before_fees_pnl,
        h.before_fees_t,
        h.trades
    );
    let verdict = run.output_json(&project, "train", "metrics.json")["verdict"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(verdict.starts_with("beats the baseline"), "{verdict}");
}

/// The check above can fail: the null pipeline with one leaking feature (the next bar's return,
/// by `LEAD`) and the look-ahead guard switched off so the leak reaches `train`. The honesty
/// figures must then show the edge the null test forbids.
#[test]
fn a_leaking_feature_on_the_null_market_shows_up_as_an_edge() {
    let project = crate::common::shipped_project();
    let sql = std::fs::read_to_string(project.path().join("stages/features/features.sql")).unwrap();
    let select = "  symbol, open_time, close,\n";
    assert!(sql.contains(select), "features.sql changed shape");
    project.write(
        "stages/features/features.sql",
        &sql.replacen(
            select,
            "  symbol, open_time, close,\n  LEAD(price_change, 1) OVER (PARTITION BY symbol ORDER BY open_time) AS leak,\n",
            1,
        ),
    );
    let pipeline = std::fs::read_to_string(project.path().join("pipelines/null.yaml")).unwrap();
    project.write(
        "pipelines/null.yaml",
        &pipeline.replace("lookahead_check: true", "lookahead_check: false"),
    );
    let (project, run) = run_in(project, "null");
    let h = honesty(&project, &run);
    assert!(h.excess > 2.0 * h.noise, "the leak went unnoticed: {h:?}");
    assert!(h.before_fees_t > 4.0, "the leak went unnoticed: {h:?}");
}

/// The shipped pipeline `name` as a sweep: the shipped mlp with and without BTC's last return
/// (the planted edge's carrier) x eight seeds = 16 models, each backtested with the shipped
/// rules,
/// judged by two `compare` stages, on net returns and on returns before fees. Half a year, CPU.
fn run_sweep(name: &str) -> (Project, Run) {
    let project = crate::common::shipped_project();
    let path = format!("pipelines/{name}.yaml");
    let text = std::fs::read_to_string(project.path().join(&path)).unwrap();
    let train = "    with: {model: mlp, device: auto, hidden: 64, epochs: 10, folds: 4}\n";
    let entry = "      entry: {long_above: 0.4, short: false}\n";
    let report = "  report:\n    kind: report\n";
    for shape in [train, entry, report, "history: 365d"] {
        assert!(text.contains(shape), "{path} changed shape: {shape}");
    }
    let text = text
        .replace("history: 365d", "history: 180d")
        .replace(
            train,
            "    matrix:\n      drop: [nothing, btc_ret]\n      seed: [1, 2, 3, 4, 5, 6, 7, 8]\n    with: {model: mlp, device: cpu, hidden: 64, epochs: 10, folds: 4, seed: \"${matrix.seed}\", exclude: [close, \"${matrix.drop}\"]}\n",
        )
        .replace(
            report,
            "  compare_net:\n    kind: compare\n    needs: [train, backtest]\n    with: {returns: net}\n  compare_gross:\n    kind: compare\n    needs: [train, backtest]\n    with: {returns: gross}\n  report:\n    kind: report\n",
        );
    project.write(&path, &text);
    let run = project.run(&["run", &path, "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    (project, run)
}

/// (DSR, PBO, winner) of a compare stage.
fn judged(project: &Project, run: &Run, stage: &str) -> (f64, f64, String) {
    let summary = run.output_json(project, stage, "compare.json");
    let board = run.output_of(project, stage).join("leaderboard.txt");
    eprintln!(
        "{stage}:\n{}",
        std::fs::read_to_string(board).unwrap_or_default()
    );
    assert_eq!(summary["members"], 16, "{summary}");
    (
        summary["deflated"]["dsr"].as_f64().unwrap(),
        summary["overfitting"]["pbo"].as_f64().unwrap(),
        summary["winner"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn on_the_null_market_compare_refuses_the_best_of_the_sweep() {
    let (project, run) = run_sweep("null");
    let (dsr, _, winner) = judged(&project, &run, "compare_net");
    assert!(
        dsr < 0.95,
        "net: the best of 16 ({winner}) passes with DSR {dsr} on a null market"
    );
    // Before costs, cost drag no longer separates the members: luck alone ranks them.
    let (dsr, pbo, winner) = judged(&project, &run, "compare_gross");
    assert!(
        dsr < 0.95,
        "gross: the best of 16 ({winner}) passes with DSR {dsr} on a null market"
    );
    assert!(
        pbo >= 0.3,
        "gross: PBO {pbo} on a null market: the in-sample best keeps winning"
    );
}

#[test]
fn on_the_planted_market_the_best_of_the_sweep_survives() {
    let (project, run) = run_sweep("planted");
    // The planted edge is small next to the costs (the single backtest above loses after fees
    // while earning before them), so the sweep is judged on returns before costs.
    let (dsr, pbo, winner) = judged(&project, &run, "compare_gross");
    assert!(
        !winner.contains("drop=btc_ret"),
        "the winner ({winner}) cannot see the edge"
    );
    assert!(
        dsr >= 0.95,
        "gross: the planted edge's best ({winner}) has DSR {dsr}"
    );
    assert!(
        pbo < 0.2,
        "gross: PBO {pbo}: the in-sample best does not keep winning"
    );
    // The sweep in a browser: the run's page shows the leaderboard with its winner.
    let server = crate::serve::start(&project, &[]);
    let id = run.json()["run_id"].as_str().unwrap().to_owned();
    let (status, page) = crate::serve::get(&server, &format!("/runs/{id}"), &[]);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Sweep leaderboard (compare_")
            && page.contains(&format!("<code>{winner}</code>"))
            && page.contains("Deflated Sharpe Ratio"),
        "{page}"
    );
}

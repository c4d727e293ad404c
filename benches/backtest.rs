//! Backtest benchmark (issue 7): 100 symbols x 1h x 2 years of signals, about 20,000 trades,
//! through `backtest::simulate`; reports bar-steps (bars x symbols) per second against the
//! target of 20M per second, and the buy-and-hold benchmark's time beside it.
//!
//! Prices are seeded random walks (0.5% hourly volatility, about 1 bar in 50 missing); 2% of
//! cells signal, long or short, right about the next four bars 60% of the time. Then (issue 24)
//! the outcome distribution of the resulting portfolio: 2,000 stationary-bootstrap paths of its
//! 17,520 per-bar returns (blocks of 24 bars), target under 1 s. Run with
//! `cargo bench --bench backtest`.

use std::time::Instant;

use asterflow::backtest::outcomes::{MonteCarlo, bar_returns, bootstrap};
use asterflow::backtest::{
    CorrelationCap, Instrument, LONG, Market, Portfolio, Rules, SHORT, Signals, Sizing,
    buy_and_hold, simulate,
};
use asterflow::util::rng::Rng;

const SYMBOLS: usize = 100;
const BARS: usize = 2 * 8760;
const HOUR: i64 = 3_600_000;
const TARGET: f64 = 20e6;
const REPEATS: usize = 15;

fn main() {
    let started = Instant::now();
    let symbols = (0..SYMBOLS).map(|s| format!("S{s:03}USDT")).collect();
    let first = 1_704_067_200_000; // 2024-01-01
    let mut market = Market::new(symbols, first, first + (BARS as i64 - 1) * HOUR, HOUR).unwrap();
    let mut rng = Rng::new(7);
    for symbol in 0..SYMBOLS {
        let mut price = 10.0 + 100.0 * rng.uniform();
        for bar in 0..BARS {
            let open = price;
            let close = open * (1.0 + 0.005 * rng.normal());
            let high = open.max(close) * (1.0 + 0.002 * rng.uniform());
            let low = open.min(close) * (1.0 - 0.002 * rng.uniform());
            price = close;
            if rng.uniform() < 0.02 {
                continue;
            }
            market.set(symbol, first + bar as i64 * HOUR, [open, high, low, close]);
        }
    }
    // A signal is right about the sign of the next four bars' move 60% of the time: enough edge
    // to pay the costs, so the account neither dies (no trades) nor explodes.
    let mut signals = Signals::flat(market.cells());
    for bar in 0..BARS - 5 {
        for symbol in 0..SYMBOLS {
            let cell = bar * SYMBOLS + symbol;
            if rng.uniform() >= 0.02 {
                continue;
            }
            let entry = market.open[cell + SYMBOLS];
            let exit = market.close[cell + 4 * SYMBOLS];
            let up = if entry.is_nan() || exit.is_nan() {
                rng.uniform() < 0.5
            } else {
                exit > entry
            };
            let right = rng.uniform() < 0.6;
            signals.side[cell] = if up == right { LONG } else { SHORT };
            signals.score[cell] = rng.uniform() as f32;
        }
    }
    let instruments = vec![
        Instrument {
            step_size: 0.001,
            min_notional: 5.0
        };
        SYMBOLS
    ];
    let funding: Vec<f64> = (0..market.cells())
        .map(|cell| {
            if (cell / SYMBOLS).is_multiple_of(8) {
                0.0001
            } else {
                0.0
            }
        })
        .collect();
    let rules = Rules {
        capital: 10_000.0,
        risk_per_trade: 0.01,
        max_positions: 5,
        maker_fee: 0.0005,
        taker_fee: 0.00075,
        slippage: 0.0002,
        stop: 0.01,
        target: Some(0.02),
        horizon: Some(4),
        reverse: true,
        portfolio: Portfolio::default(),
    };
    eprintln!(
        "{SYMBOLS} symbols x {BARS} bars generated in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut seconds = Vec::with_capacity(REPEATS);
    let mut result = None;
    for _ in 0..REPEATS {
        let clock = Instant::now();
        let simulation = simulate(&market, &signals, &instruments, Some(&funding), &rules);
        seconds.push(clock.elapsed().as_secs_f64());
        result = Some(simulation);
    }
    let simulation = result.unwrap();
    seconds.sort_by(f64::total_cmp);
    let median = seconds[REPEATS / 2];
    let best = seconds[0];
    let steps = simulation.bar_steps as f64;
    let clock = Instant::now();
    let benchmark = buy_and_hold(&market, &rules);
    let hold = clock.elapsed().as_secs_f64();
    println!(
        "backtest: {SYMBOLS} symbols x {BARS} bars = {:.2}M bar-steps, {} trades, final equity {:.2} (buy-and-hold {:.2})",
        steps / 1e6,
        simulation.trades.len(),
        simulation.equity.last().unwrap(),
        benchmark.last().unwrap(),
    );
    println!(
        "simulate: median {:.1} ms ({:.1}M bar-steps/s), best {:.1} ms ({:.1}M bar-steps/s) over {REPEATS} runs; buy-and-hold {:.1} ms",
        median * 1e3,
        steps / median / 1e6,
        best * 1e3,
        steps / best / 1e6,
        hold * 1e3
    );
    let rate = steps / median;
    println!(
        "target: at least {:.0}M bar-steps/s: {}",
        TARGET / 1e6,
        if rate >= TARGET { "met" } else { "MISSED" }
    );

    // Every portfolio rule on (issue 24): the daily loss limit, the correlation cap over a
    // week of bars, and each of the two sizings that read more than the signal.
    for (name, sizing) in [
        (
            "volatility",
            Sizing::Volatility {
                target: 0.5,
                window: 168,
            },
        ),
        ("kelly", Sizing::Kelly { fraction: 0.25 }),
    ] {
        let ruled = Rules {
            portfolio: Portfolio {
                daily_loss_limit: Some(0.05),
                correlation: Some(CorrelationCap {
                    window: 168,
                    max: 0.8,
                    max_correlated: 2,
                }),
                sizing,
            },
            ..rules
        };
        let mut seconds = Vec::with_capacity(5);
        let mut outcome = None;
        for _ in 0..5 {
            let clock = Instant::now();
            outcome = Some(simulate(
                &market,
                &signals,
                &instruments,
                Some(&funding),
                &ruled,
            ));
            seconds.push(clock.elapsed().as_secs_f64());
        }
        seconds.sort_by(f64::total_cmp);
        let outcome = outcome.unwrap();
        let skipped = outcome.skipped;
        println!(
            "every rule on, {name} sizing: median {:.1} ms ({:.1}M bar-steps/s), {} trades; skipped: daily loss limit {}, correlation cap {}, no size {}, capacity {}; target at least {:.0}M bar-steps/s: {}",
            seconds[2] * 1e3,
            steps / seconds[2] / 1e6,
            outcome.trades.len(),
            skipped.daily_loss_limit,
            skipped.correlation,
            skipped.sizing,
            skipped.capacity,
            TARGET / 1e6,
            if steps / seconds[2] >= TARGET {
                "met"
            } else {
                "MISSED"
            }
        );
    }

    let returns = bar_returns(&simulation.equity, rules.capital);
    let settings = MonteCarlo::default();
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let mut seconds = Vec::with_capacity(5);
    let mut outcomes = None;
    for _ in 0..5 {
        let clock = Instant::now();
        outcomes = bootstrap(&market.times, &returns, HOUR, &settings, threads);
        seconds.push(clock.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    let outcomes = outcomes.expect("a bootstrap");
    println!(
        "bootstrap: {} paths x {} bars on {threads} threads: median {:.0} ms (best {:.0} ms) over 5 runs; total return 5/50/95th percentiles {:+.1}% / {:+.1}% / {:+.1}%; target under 1 s: {}",
        settings.paths,
        returns.len(),
        seconds[2] * 1e3,
        seconds[0] * 1e3,
        outcomes.total_return.p5 * 100.0,
        outcomes.total_return.p50 * 100.0,
        outcomes.total_return.p95 * 100.0,
        if seconds[2] < 1.0 { "met" } else { "MISSED" }
    );
}

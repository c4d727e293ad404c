//! Seeded price series that look like real candles to a data-quality gate: fat-tailed
//! returns (Student-t, Laplace), volatility that clusters (GARCH(1,1)) or switches regime,
//! crashes and pumps that persist, overreactions that half revert, flash wicks. The gate's
//! tests and its calibration benchmark use them: clean data of every kind here must pass.

use crate::market::model::Kline;
use crate::util::rng::Rng;

const HOUR: i64 = 3_600_000;

/// How a series' returns are drawn.
#[derive(Debug, Clone, Copy)]
pub enum Shocks {
    /// Student-t with this many degrees of freedom, scaled to unit variance.
    StudentT(u32),
    Laplace,
    Normal,
}

#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    pub seed: u64,
    pub shocks: Shocks,
    /// The typical one-bar volatility.
    pub vol: f64,
    /// GARCH(1,1) persistence (alpha + beta); 0 = constant volatility.
    pub persistence: f64,
    /// Switch between calm (vol / 2) and storm (vol x 4) regimes every so many bars; 0 = never.
    pub regimes: usize,
    /// Persistent jumps: (bar, factor), a crash or a pump that stays.
    pub jumps: &'static [(usize, f64)],
    /// Overreactions: the share of bars with a jump of 8 to 20% that half reverts next bar.
    pub overreactions: f64,
    /// The share of bars with a flash wick of 5 to 30% that recovers within the bar.
    pub flash_wicks: f64,
}

/// The common case: Student-t(3) shocks, 1% volatility, GARCH persistence 0.98, nothing else.
const BASE: Recipe = Recipe {
    seed: 0,
    shocks: Shocks::StudentT(3),
    vol: 0.01,
    persistence: 0.98,
    regimes: 0,
    jumps: &[],
    overreactions: 0.0,
    flash_wicks: 0.0,
};

pub const RECIPES: [Recipe; 12] = [
    Recipe { seed: 1, ..BASE },
    Recipe { seed: 2, ..BASE },
    Recipe {
        seed: 3,
        vol: 0.03,
        ..BASE
    },
    Recipe {
        seed: 4,
        vol: 0.003,
        ..BASE
    },
    Recipe {
        seed: 5,
        shocks: Shocks::StudentT(4),
        vol: 0.015,
        persistence: 0.97,
        ..BASE
    },
    Recipe {
        seed: 6,
        shocks: Shocks::StudentT(4),
        vol: 0.02,
        persistence: 0.0,
        ..BASE
    },
    Recipe {
        seed: 7,
        shocks: Shocks::Laplace,
        ..BASE
    },
    Recipe {
        seed: 8,
        shocks: Shocks::Normal,
        persistence: 0.0,
        regimes: 500,
        ..BASE
    },
    Recipe {
        seed: 9,
        vol: 0.012,
        jumps: &[(3000, 0.6), (6000, 1.45)],
        ..BASE
    },
    Recipe {
        seed: 10,
        vol: 0.02,
        persistence: 0.995,
        ..BASE
    },
    Recipe {
        seed: 11,
        vol: 0.004,
        flash_wicks: 0.002,
        ..BASE
    },
    Recipe {
        seed: 12,
        overreactions: 0.002,
        ..BASE
    },
];

fn shock(rng: &mut Rng, shocks: Shocks) -> f64 {
    match shocks {
        Shocks::StudentT(dof) => {
            let chi: f64 = (0..dof).map(|_| rng.normal().powi(2)).sum();
            let t = rng.normal() / (chi / f64::from(dof)).sqrt();
            t / (f64::from(dof) / (f64::from(dof) - 2.0)).sqrt()
        }
        Shocks::Laplace => {
            let u = rng.uniform() - 0.5;
            // Unit variance: b = 1 / sqrt(2).
            -u.signum() * (1.0 - 2.0 * u.abs()).max(1e-300).ln() / 2f64.sqrt()
        }
        Shocks::Normal => rng.normal(),
    }
}

/// One year of hourly candles, the last opening at `last_open_ms`.
pub fn series(recipe: &Recipe, last_open_ms: i64) -> Vec<Kline> {
    let bars = 8760;
    let mut rng = Rng::new(recipe.seed);
    let first = last_open_ms - (bars as i64 - 1) * HOUR;
    let (alpha, beta) = if recipe.persistence > 0.0 {
        (0.08, recipe.persistence - 0.08)
    } else {
        (0.0, 0.0)
    };
    let base = recipe.vol * recipe.vol;
    let mut variance = base;
    let mut previous_shock = 0.0;
    let mut close: f64 = 100.0;
    let mut pending_revert = 1.0;
    let mut rows = Vec::with_capacity(bars);
    for i in 0..bars {
        if recipe.persistence > 0.0 {
            variance = base * (1.0 - alpha - beta)
                + alpha * previous_shock * previous_shock
                + beta * variance;
        }
        let mut sigma = variance.sqrt();
        if let Some(regime) = i.checked_div(recipe.regimes) {
            sigma *= if regime.is_multiple_of(2) { 0.5 } else { 4.0 };
        }
        let r = sigma * shock(&mut rng, recipe.shocks);
        previous_shock = r;
        let open = close;
        let mut factor = r.exp() * pending_revert;
        pending_revert = 1.0;
        for &(bar, jump) in recipe.jumps {
            if bar == i {
                factor *= jump;
            }
        }
        if rng.uniform() < recipe.overreactions {
            let size = 0.08 + 0.12 * rng.uniform();
            let up = rng.uniform() < 0.5;
            let jump = if up { 1.0 + size } else { 1.0 - size };
            factor *= jump;
            // Half of it is undone next bar.
            pending_revert = 1.0 / jump.sqrt();
        }
        close = open * factor;
        let wick = |rng: &mut Rng| (sigma * rng.normal().abs() * 0.6).exp();
        let high = open.max(close) * wick(&mut rng);
        let mut low = open.min(close) / wick(&mut rng);
        if rng.uniform() < recipe.flash_wicks {
            low = open.min(close) * (1.0 - 0.05 - 0.25 * rng.uniform());
        }
        let volume = 1000.0 * (1.0 + rng.uniform());
        let open_time = first + i as i64 * HOUR;
        rows.push(Kline {
            open_time,
            open,
            high,
            low,
            close,
            volume,
            close_time: open_time + HOUR - 1,
            quote_volume: volume * close,
            trades: 100,
            taker_buy_base: volume / 2.0,
            taker_buy_quote: volume * close / 2.0,
        });
    }
    rows
}

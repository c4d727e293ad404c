//! Choosing among many configurations honestly (DOMAIN.md section 7): the best of N backtests is
//! biased upward even when every member is honest. Two corrections, both on per-period returns:
//!
//! - the **Deflated Sharpe Ratio** (Bailey and Lopez de Prado, 2014): the probability that the
//!   best member's true Sharpe is above the Sharpe that the luck of trying N members with these
//!   Sharpes' variance would give, for its track length, skewness and kurtosis;
//! - the **Probability of Backtest Overfitting** by combinatorially symmetric cross-validation
//!   (Bailey, Borwein, Lopez de Prado and Zhu, 2017): over every way to pick half of S time
//!   blocks as in-sample, how often the in-sample best ranks at or below the median out of
//!   sample.
//!
//! Sharpes here are per period (never annualised): mean / sample standard deviation, 0 for a
//! flat series.

use serde::{Deserialize, Serialize};

/// The Euler-Mascheroni constant.
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// Mean over sample standard deviation (n - 1); 0 when the series is flat or shorter than 2.
pub fn sharpe(returns: &[f64]) -> f64 {
    let n = returns.len();
    if n < 2 {
        return 0.0;
    }
    let mean = returns.iter().sum::<f64>() / n as f64;
    let variance = returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    if variance > 0.0 {
        mean / variance.sqrt()
    } else {
        0.0
    }
}

/// Skewness and kurtosis (not excess) from the population moments: m3 / m2^1.5, m4 / m2^2;
/// (0, 3) for a flat series, as for a normal one.
pub fn skew_kurtosis(returns: &[f64]) -> (f64, f64) {
    let n = returns.len() as f64;
    if returns.len() < 2 {
        return (0.0, 3.0);
    }
    let mean = returns.iter().sum::<f64>() / n;
    let moment = |k: i32| returns.iter().map(|r| (r - mean).powi(k)).sum::<f64>() / n;
    let m2 = moment(2);
    if m2 <= 0.0 {
        return (0.0, 3.0);
    }
    (moment(3) / m2.powf(1.5), moment(4) / (m2 * m2))
}

/// The standard normal distribution function.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// The complementary error function to about 1e-15: the Taylor series of erf near 0, a
/// continued fraction (modified Lentz) in the tails.
fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.5 {
        // erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
        let mut term = x;
        let mut sum = x;
        let x2 = x * x;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        return 1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum;
    }
    if x > 27.0 {
        return 0.0;
    }
    // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + 2/(x + ...)))))
    let tiny = 1e-300;
    let mut f = x;
    let mut c = x;
    let mut d = 0.0;
    for n in 1..500 {
        let a = n as f64 / 2.0;
        d = x + a * d;
        d = if d.abs() < tiny { tiny } else { d };
        c = x + a / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

/// The standard normal quantile: Acklam's rational approximation polished by Halley steps on
/// [`normal_cdf`].
pub fn normal_quantile(p: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) || p.is_nan() {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let low = 0.024_25;
    let mut x = if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    for _ in 0..2 {
        let error = normal_cdf(x) - p;
        let density = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        if density <= 0.0 {
            break;
        }
        let u = error / density;
        x -= u / (1.0 + x * u / 2.0);
    }
    x
}

/// serde_json writes NaN as null: read it back as NaN.
fn nan_for_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// The Deflated Sharpe Ratio of the best of `trials` members, with its inputs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deflated {
    /// The best member's per-period Sharpe.
    pub sharpe: f64,
    /// The Sharpe expected from the best of `trials` members by luck alone.
    pub expected_max: f64,
    pub trials: usize,
    /// The variance of the members' per-period Sharpes.
    pub variance: f64,
    /// Periods in the best member's track.
    pub periods: usize,
    pub skewness: f64,
    /// Kurtosis, not excess (3 for a normal distribution).
    pub kurtosis: f64,
    /// The probability that the true Sharpe exceeds `expected_max`; NaN (written as null)
    /// when the track is too short to say.
    #[serde(deserialize_with = "nan_for_null")]
    pub dsr: f64,
}

/// DSR = Z((SR - SR0) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2)) with
/// SR0 = sqrt(V) ((1 - gamma) Z^-1(1 - 1/N) + gamma Z^-1(1 - 1/(N e))).
pub fn deflated_sharpe(
    best: f64,
    periods: usize,
    skewness: f64,
    kurtosis: f64,
    sharpes: &[f64],
) -> Deflated {
    let trials = sharpes.len();
    let variance = if trials > 1 {
        let mean = sharpes.iter().sum::<f64>() / trials as f64;
        sharpes.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (trials - 1) as f64
    } else {
        0.0
    };
    let expected_max = if trials > 1 {
        let n = trials as f64;
        variance.sqrt()
            * ((1.0 - EULER_GAMMA) * normal_quantile(1.0 - 1.0 / n)
                + EULER_GAMMA * normal_quantile(1.0 - 1.0 / (n * std::f64::consts::E)))
    } else {
        0.0
    };
    let denominator = 1.0 - skewness * best + (kurtosis - 1.0) / 4.0 * best * best;
    let dsr = if periods > 1 && denominator > 0.0 {
        normal_cdf((best - expected_max) * ((periods - 1) as f64).sqrt() / denominator.sqrt())
    } else {
        f64::NAN
    };
    Deflated {
        sharpe: best,
        expected_max,
        trials,
        variance,
        periods,
        skewness,
        kurtosis,
        dsr,
    }
}

/// The Probability of Backtest Overfitting, with its inputs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Overfitting {
    pub pbo: f64,
    /// Time blocks (S) and the splits tried (C(S, S/2)).
    pub blocks: usize,
    pub splits: usize,
    /// Periods per block (rows after the last whole block are left out).
    pub block_periods: usize,
    /// The mean logit of the in-sample winner's out-of-sample relative rank.
    pub mean_logit: f64,
}

/// CSCV over `returns` (one series per member, all of one length T), cut into `blocks` (even)
/// blocks of T / S periods. For each choice of S/2 blocks as in-sample: the member with the best
/// in-sample Sharpe, its rank out of sample among all members (1 = worst, N = best; ties count
/// in its favour, so a tie is not an overfit), w = rank / (N + 1), logit ln(w / (1 - w)); PBO is
/// the share of splits whose logit is at most 0. `None` without at least two members and one
/// period per block.
pub fn overfitting(returns: &[Vec<f64>], blocks: usize) -> Option<Overfitting> {
    let members = returns.len();
    let periods = returns.iter().map(Vec::len).min()?;
    if members < 2 || blocks < 2 || !blocks.is_multiple_of(2) || periods < blocks * 2 {
        return None;
    }
    let block_periods = periods / blocks;
    // Per member and block: count, sum and sum of squares, so a split's Sharpe is O(S).
    let stats: Vec<Vec<(f64, f64)>> = returns
        .iter()
        .map(|series| {
            (0..blocks)
                .map(|block| {
                    let rows = &series[block * block_periods..(block + 1) * block_periods];
                    (rows.iter().sum(), rows.iter().map(|r| r * r).sum())
                })
                .collect()
        })
        .collect();
    let sharpe_of = |member: usize, chosen: &[bool], inside: bool| {
        let (mut sum, mut squares, mut count) = (0.0, 0.0, 0usize);
        for (block, &(s, q)) in stats[member].iter().enumerate() {
            if chosen[block] == inside {
                sum += s;
                squares += q;
                count += block_periods;
            }
        }
        let n = count as f64;
        let mean = sum / n;
        let variance = (squares - n * mean * mean) / (n - 1.0);
        if variance > 1e-300 {
            mean / variance.sqrt()
        } else {
            0.0
        }
    };
    let mut chosen = vec![false; blocks];
    let (mut splits, mut overfit, mut logits) = (0usize, 0usize, 0.0);
    let half = blocks / 2;
    // Every subset of `half` blocks, as bit patterns in increasing order.
    let mut pattern: u64 = (1u64 << half) - 1;
    while pattern < (1u64 << blocks) {
        for (block, slot) in chosen.iter_mut().enumerate() {
            *slot = pattern & (1 << block) != 0;
        }
        let in_sample: Vec<f64> = (0..members).map(|m| sharpe_of(m, &chosen, true)).collect();
        let best = (0..members)
            .max_by(|&a, &b| in_sample[a].total_cmp(&in_sample[b]).then(b.cmp(&a)))
            .expect("members");
        let out: Vec<f64> = (0..members).map(|m| sharpe_of(m, &chosen, false)).collect();
        let rank = out.iter().filter(|&&s| s <= out[best]).count();
        let w = rank as f64 / (members + 1) as f64;
        let logit = (w / (1.0 - w)).ln();
        splits += 1;
        logits += logit;
        if logit <= 0.0 {
            overfit += 1;
        }
        // The next pattern with the same number of bits (Gosper's hack).
        let c = pattern & pattern.wrapping_neg();
        let r = pattern + c;
        pattern = (((r ^ pattern) >> 2) / c) | r;
    }
    Some(Overfitting {
        pbo: overfit as f64 / splits as f64,
        blocks,
        splits,
        block_periods,
        mean_logit: logits / splits as f64,
    })
}

/// The per-bar returns a comparison judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Returns {
    Net,
    Gross,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    Sharpe,
    TotalReturn,
    MaxDrawdown,
    Trades,
    TBeforeFees,
    BalancedAccuracy,
    LogLoss,
}

/// One member's row of the leaderboard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub rank: usize,
    pub member: String,
    pub values: Vec<(String, String)>,
    pub sharpe: Option<f64>,
    /// Per bar, on the returns judged (net or gross).
    pub sharpe_per_bar: f64,
    pub total_return: f64,
    pub max_drawdown: f64,
    pub trades: usize,
    pub pnl_before_fees: f64,
    pub t_before_fees: Option<f64>,
    pub balanced_accuracy: Option<f64>,
    pub baseline_balanced_accuracy: Option<f64>,
    pub log_loss: Option<f64>,
    pub baseline_log_loss: Option<f64>,
}

/// A sweep's comparison (`compare.json`): the leaderboard, the selection correction, the
/// verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub members: usize,
    pub by: By,
    pub returns: Returns,
    pub winner: String,
    pub deflated: Option<Deflated>,
    pub overfitting: Option<Overfitting>,
    pub survives: bool,
    pub verdict: String,
    pub leaderboard: Vec<Row>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_distribution_to_1e_12() {
        // Reference values (Python's statistics.NormalDist, to 16 digits).
        for (x, want) in [
            (0.0, 0.5),
            (1.0, 0.841_344_746_068_542_9),
            (-1.96, 0.024_997_895_148_220_435),
            (2.5, 0.993_790_334_674_223_8),
            (-3.0, 0.001_349_898_031_630_094_6),
            (5.0, 0.999_999_713_348_428_1),
        ] {
            assert!(
                (normal_cdf(x) - want).abs() < 1e-12,
                "{x}: {}",
                normal_cdf(x)
            );
        }
        for p in [1e-9, 0.001, 0.025, 0.3, 0.5, 0.9, 0.999_999] {
            assert!(
                (normal_cdf(normal_quantile(p)) - p).abs() < 1e-12 * p.max(1e-3),
                "{p}"
            );
        }
        assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-12);
    }

    #[test]
    fn sharpe_and_moments_worked_by_hand() {
        // mean 2, sample sd sqrt(10/3)
        let r = [0.0, 1.0, 3.0, 4.0];
        assert!((sharpe(&r) - 2.0 / (10.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(sharpe(&[1.0, 1.0, 1.0]), 0.0);
        // Symmetric: no skew; m2 = 2.5, m4 = (16 + 1 + 1 + 16) / 4 = 8.5 -> 8.5 / 6.25.
        let (g3, g4) = skew_kurtosis(&r);
        assert!(g3.abs() < 1e-15 && (g4 - 1.36).abs() < 1e-12, "{g3} {g4}");
    }
}

//! A seeded classification problem with a known answer, for tests and benchmarks: `symbols`
//! series of hourly bars, `dim` standard-normal features, and three classes given by the sign
//! of a fixed linear score with a margin (`BUY` above it, `SELL` below minus it, `HOLD`
//! between), so a linear model can reach perfect accuracy and a do-nothing model cannot.

use super::Dataset;
use crate::util::rng::Rng;

const HOUR: i64 = 3_600_000;

/// `bars x symbols` rows in time order, labels looking `horizon` bars ahead.
pub fn separable(bars: usize, symbols: usize, dim: usize, horizon: i64, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let coefficients: Vec<f64> = (0..dim)
        .map(|i| if i % 2 == 0 { 1.0 } else { -0.5 })
        .collect();
    let norm = coefficients.iter().map(|c| c * c).sum::<f64>().sqrt();
    let rows = bars * symbols;
    let mut data = Dataset {
        features: (0..dim).map(|i| format!("f{i}")).collect(),
        classes: ["BUY", "HOLD", "SELL"].map(String::from).to_vec(),
        symbols: (0..symbols).map(|s| format!("S{s}USDT")).collect(),
        x: Vec::with_capacity(rows * dim),
        ..Dataset::default()
    };
    for bar in 0..bars {
        for symbol in 0..symbols {
            let values: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
            let score = values
                .iter()
                .zip(&coefficients)
                .map(|(x, c)| x * c)
                .sum::<f64>()
                / norm;
            data.x.extend(values.iter().map(|&v| v as f32));
            data.y.push(if score > 0.5 {
                0
            } else if score < -0.5 {
                2
            } else {
                1
            });
            let time = bar as i64 * HOUR;
            data.time.push(time);
            data.label_end.push(time + horizon * HOUR);
            data.symbol.push(symbol as u32);
        }
    }
    data
}

//! Calibration of the bad-tick rule (issue 17): how often clean fat-tailed series are flagged
//! (false quarantines) and how often planted bad ticks are found, over many seeds of every
//! recipe in `quality::synthetic`; and the rule's speed. Run with `cargo bench --bench ticks`.
//!
//! Targets: no false quarantine on the recipes' own seeds (the test set); every planted bad
//! tick found; the false-quarantine rate over all seeds reported.

use std::time::Instant;

use asterflow::quality::synthetic::{RECIPES, Recipe, series};
use asterflow::quality::ticks::{Bar, TickRules, find};

const HOUR: i64 = 3_600_000;
const SEEDS: u64 = 100;

fn bars(rows: &[asterflow::market::model::Kline]) -> Vec<Bar> {
    rows.iter()
        .map(|k| Bar {
            open_time: k.open_time,
            open: k.open,
            high: k.high,
            low: k.low,
            close: k.close,
        })
        .collect()
}

fn main() {
    let rules = TickRules::default();
    let last = 1_767_225_600_000; // 2026-01-01T00:00Z
    let mut series_count = 0;
    let mut flagged_series = Vec::new();
    let mut own_seed_flags = 0;
    // Per defect: (planted, found).
    let mut found = [(0usize, 0usize); 5];
    let mut bars_seen = 0usize;
    let mut finding = std::time::Duration::ZERO;
    for recipe in &RECIPES {
        own_seed_flags += find(&bars(&series(recipe, last)), HOUR, &rules).len();
        for seed in 0..SEEDS {
            let recipe = Recipe {
                seed: recipe.seed * 1000 + seed,
                ..*recipe
            };
            let clean = bars(&series(&recipe, last));
            let started = Instant::now();
            let flags = find(&clean, HOUR, &rules);
            finding += started.elapsed();
            bars_seen += clean.len();
            series_count += 1;
            if !flags.is_empty() {
                flagged_series.push((recipe, flags[0].why.clone()));
            }
            // One planted defect per kind, at a seeded position away from the ends.
            let at = 100 + (seed as usize * 7919) % (clean.len() - 200);
            for (index, (_, plant, _)) in DEFECTS.iter().enumerate() {
                let mut dirty = clean.clone();
                plant(&mut dirty[at]);
                found[index].0 += 1;
                if find(&dirty, HOUR, &rules)
                    .iter()
                    .any(|flag| flag.open_time == dirty[at].open_time)
                {
                    found[index].1 += 1;
                }
            }
        }
    }
    println!("bad-tick rule at its defaults: {rules:?}");
    println!(
        "clean series flagged: {} of {series_count} ({:.2}%)",
        flagged_series.len(),
        100.0 * flagged_series.len() as f64 / series_count as f64
    );
    for (recipe, why) in &flagged_series {
        println!(
            "  seed {} ({:?}, vol {}): {why}",
            recipe.seed, recipe.shocks, recipe.vol
        );
    }
    println!(
        "recipes' own seeds (the test set) flagged bars: {own_seed_flags}: {}",
        if own_seed_flags == 0 { "met" } else { "MISSED" }
    );
    for ((name, _, must), (planted, hits)) in DEFECTS.iter().zip(found) {
        let verdict = match (must, hits == planted) {
            (true, true) => "met",
            (true, false) => "MISSED",
            (false, _) => "shown",
        };
        println!("planted {name}: found {hits} of {planted}: {verdict}");
    }
    println!(
        "speed: {:.1} M bars/s ({} bars in {:.3} s)",
        bars_seen as f64 / finding.as_secs_f64() / 1e6,
        bars_seen,
        finding.as_secs_f64()
    );
}

/// Defects planted one at a time: name, how, and whether every one must be found (a 1.5x bar
/// is a plausible move on the wildest recipes, so its rate is shown, not required).
type Plant = fn(&mut Bar);
const DEFECTS: [(&str, Plant, bool); 5] = [
    ("10x bar", |b| scale(b, 10.0), true),
    ("0.1x bar", |b| scale(b, 0.1), true),
    ("near-zero low", |b| b.low *= 1e-6, true),
    ("3x high", |b| b.high *= 3.0, true),
    ("1.5x bar", |b| scale(b, 1.5), false),
];

fn scale(bar: &mut Bar, factor: f64) {
    bar.open *= factor;
    bar.high *= factor;
    bar.low *= factor;
    bar.close *= factor;
}

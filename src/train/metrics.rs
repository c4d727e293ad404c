//! Classification metrics, always beside the majority-class baseline (DOMAIN.md section 4).
//!
//! The baseline is a model too: it predicts the class frequencies of the training span for every
//! test row (its arg-max is the majority class), and goes through the same [`evaluate`], so the
//! two columns of the table are computed the same way.

use serde::{Deserialize, Serialize};

/// Probabilities below this are clipped before the logarithm (as scikit-learn does).
const LOG_LOSS_EPS: f64 = 1e-15;

/// Per-class figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassMetrics {
    pub class: String,
    /// Rows whose true class this is.
    pub support: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Everything reported for one set of predictions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub rows: usize,
    pub accuracy: f64,
    /// The mean of the per-class recalls over classes present in the truth.
    pub balanced_accuracy: f64,
    pub log_loss: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`, in `classes` order.
    pub confusion: Vec<Vec<usize>>,
    /// The share of rows given the most-predicted class: near 1.0 is a do-nothing model.
    pub top_prediction_share: f64,
}

/// Scores `probabilities` (`rows x classes`, row-major) against `truth` (class indices).
pub fn evaluate(truth: &[u8], probabilities: &[f32], classes: &[String]) -> Metrics {
    let k = classes.len();
    assert_eq!(probabilities.len(), truth.len() * k);
    let mut confusion = vec![vec![0usize; k]; k];
    let mut log_loss = 0.0f64;
    for (row, &actual) in truth.iter().enumerate() {
        let probs = &probabilities[row * k..(row + 1) * k];
        let predicted = argmax(probs);
        confusion[actual as usize][predicted] += 1;
        let p = f64::from(probs[actual as usize]).clamp(LOG_LOSS_EPS, 1.0);
        log_loss -= p.ln();
    }
    let rows = truth.len();
    let correct: usize = (0..k).map(|class| confusion[class][class]).sum();
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|class| {
            let support: usize = confusion[class].iter().sum();
            let predicted: usize = confusion.iter().map(|row| row[class]).sum();
            let hits = confusion[class][class] as f64;
            let precision = ratio(hits, predicted as f64);
            let recall = ratio(hits, support as f64);
            let f1 = ratio(2.0 * precision * recall, precision + recall);
            ClassMetrics {
                class: classes[class].clone(),
                support,
                precision,
                recall,
                f1,
            }
        })
        .collect();
    let present: Vec<&ClassMetrics> = per_class.iter().filter(|c| c.support > 0).collect();
    let balanced_accuracy = if present.is_empty() {
        0.0
    } else {
        present.iter().map(|c| c.recall).sum::<f64>() / present.len() as f64
    };
    let top = (0..k)
        .map(|class| confusion.iter().map(|row| row[class]).sum::<usize>())
        .max()
        .unwrap_or(0);
    Metrics {
        rows,
        accuracy: ratio(correct as f64, rows as f64),
        balanced_accuracy,
        log_loss: if rows == 0 {
            0.0
        } else {
            log_loss / rows as f64
        },
        per_class,
        confusion,
        top_prediction_share: ratio(top as f64, rows as f64),
    }
}

/// The index of the largest value (the first on ties, as everywhere in this crate).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (index, &value) in values.iter().enumerate() {
        if value > values[best] {
            best = index;
        }
    }
    best
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

/// Class frequencies of `labels` (the baseline's prediction for every row).
pub fn class_frequencies(labels: impl Iterator<Item = u8>, classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; classes];
    let mut total = 0usize;
    for label in labels {
        counts[label as usize] += 1;
        total += 1;
    }
    counts
        .iter()
        .map(|&count| ratio(count as f64, total as f64) as f32)
        .collect()
}

/// The one-line judgement printed under every table.
pub fn verdict(model: &Metrics, baseline: &Metrics) -> String {
    let points = 100.0 * (model.balanced_accuracy - baseline.balanced_accuracy);
    let mut line = if points > 0.0 {
        format!(
            "beats the baseline by {points:.1} balanced-accuracy points ({:.3} vs {:.3})",
            model.balanced_accuracy, baseline.balanced_accuracy
        )
    } else {
        format!(
            "does not beat the baseline (balanced accuracy {:.3} vs {:.3})",
            model.balanced_accuracy, baseline.balanced_accuracy
        )
    };
    if model.log_loss > baseline.log_loss {
        line.push_str(&format!(
            "; its log loss is worse than the baseline's ({:.3} vs {:.3}): read its probabilities as scores, not odds",
            model.log_loss, baseline.log_loss
        ));
    }
    if model.top_prediction_share >= 0.95 {
        line.push_str(&format!(
            "; it predicts one class for {:.0}% of rows, which is close to doing nothing",
            100.0 * model.top_prediction_share
        ));
    }
    line
}

/// The metrics table: model beside baseline, per-class rows, the confusion matrix, the verdict.
pub fn table(title: &str, model: &Metrics, baseline: &Metrics) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{title}: {} test rows", model.rows);
    let _ = writeln!(out, "  {:<26} {:>15} {:>15}", "", "model", "baseline");
    for (name, a, b) in [
        ("accuracy", model.accuracy, baseline.accuracy),
        (
            "balanced accuracy",
            model.balanced_accuracy,
            baseline.balanced_accuracy,
        ),
        ("log loss", model.log_loss, baseline.log_loss),
    ] {
        let _ = writeln!(out, "  {name:<26} {a:>15.4} {b:>15.4}");
    }
    for (class, base) in model.per_class.iter().zip(&baseline.per_class) {
        let _ = writeln!(
            out,
            "  {:<26} {:>15} {:>15}",
            format!("{} P/R/F1 (n={})", class.class, class.support),
            format!("{:.2}/{:.2}/{:.2}", class.precision, class.recall, class.f1),
            format!("{:.2}/{:.2}/{:.2}", base.precision, base.recall, base.f1),
        );
    }
    let names: Vec<&str> = model.per_class.iter().map(|c| c.class.as_str()).collect();
    let _ = writeln!(out, "  confusion (rows: true, columns: predicted)");
    let _ = write!(out, "  {:>10}", "");
    for name in &names {
        let _ = write!(out, " {name:>9}");
    }
    let _ = writeln!(out);
    for (name, row) in names.iter().zip(&model.confusion) {
        let _ = write!(out, "  {name:>10}");
        for count in row {
            let _ = write!(out, " {count:>9}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "  verdict: {}", verdict(model, baseline));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        ["BUY", "HOLD", "SELL"].map(String::from).to_vec()
    }

    #[test]
    fn worked_example() {
        // Truth: BUY, BUY, HOLD, HOLD, HOLD, SELL. Predictions: BUY, HOLD, HOLD, HOLD, SELL, SELL.
        let truth = [0u8, 0, 1, 1, 1, 2];
        let p = |class: usize| {
            let mut row = [0.1f32, 0.1, 0.1];
            row[class] = 0.8;
            row
        };
        let probs: Vec<f32> = [0, 1, 1, 1, 2, 2].iter().flat_map(|&c| p(c)).collect();
        let m = evaluate(&truth, &probs, &classes());
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 1], vec![0, 0, 1]]
        );
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // Recalls 1/2, 2/3, 1/1.
        assert!((m.balanced_accuracy - (0.5 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        // Precisions 1/1, 2/3, 1/2.
        assert!((m.per_class[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.per_class[2].precision - 0.5).abs() < 1e-12);
        let f1 = 2.0 * 0.5 * 1.0 / 1.5;
        assert!((m.per_class[2].f1 - f1).abs() < 1e-12);
        // Log loss: four rows at 0.8, two at 0.1.
        let expected = -(4.0 * 0.8f64.ln() + 2.0 * 0.1f64.ln()) / 6.0;
        assert!((m.log_loss - expected).abs() < 1e-6, "{}", m.log_loss);
    }

    #[test]
    fn the_majority_baseline_has_chance_balanced_accuracy_and_says_so() {
        let truth: Vec<u8> = (0..100).map(|i| if i < 86 { 1 } else { 0 }).collect();
        let prior = class_frequencies(truth.iter().copied(), 3);
        let probs: Vec<f32> = truth.iter().flat_map(|_| prior.clone()).collect();
        let baseline = evaluate(&truth, &probs, &classes());
        assert!((baseline.accuracy - 0.86).abs() < 1e-9);
        assert!((baseline.balanced_accuracy - 0.5).abs() < 1e-9);
        let verdict = verdict(&baseline, &baseline);
        assert!(
            verdict.starts_with("does not beat the baseline"),
            "{verdict}"
        );
        assert!(verdict.contains("doing nothing"), "{verdict}");
    }
}

//! Time splits: walk-forward folds with a purge and an embargo (DOMAIN.md section 4).
//!
//! The distinct bar times are cut into `folds + 1` contiguous blocks of (nearly) equal numbers of
//! times. Fold `k` tests on block `k` and trains on the blocks before it: all of them
//! (`expanding`) or the last `train_blocks` (`rolling`). Rows never shuffle across time.
//!
//! A training row's label looks at the bars after it up to its `label_end` (the open time of the
//! last bar its label reads). The purge drops every training row whose label window reaches the
//! test block: `label_end >= test_start`, judged by each row's own label end, so a label that
//! stretches over missing bars is purged too. The embargo then drops the rows whose label window
//! ends within `embargo_ms` before the test block, so every training label ends at least that
//! long before the first test bar. (De Prado's embargo guards training rows that *follow* a test
//! block; in walk-forward none do, so the gap is placed before it.)

use serde::Serialize;

/// How training windows grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// Train on every block before the test block.
    Expanding,
    /// Train on the last `train_blocks` blocks before the test block.
    Rolling,
}

/// What a split needs to know.
#[derive(Debug, Clone, Copy)]
pub struct SplitSpec {
    pub folds: usize,
    pub window: Window,
    pub train_blocks: usize,
    /// Extra gap between the last training row and the test block, in milliseconds of open
    /// time, beyond the purge.
    pub embargo_ms: i64,
}

/// One fold: row indices into the dataset, each list in dataset order.
#[derive(Debug, Clone, Serialize)]
pub struct Fold {
    pub number: usize,
    #[serde(skip)]
    pub train: Vec<usize>,
    #[serde(skip)]
    pub test: Vec<usize>,
    /// First and last open time of the training rows kept.
    pub train_span: (i64, i64),
    /// First and last open time of the test block.
    pub test_span: (i64, i64),
    pub train_rows: usize,
    pub test_rows: usize,
    /// Training rows dropped because their label window reaches the test block.
    pub purged: usize,
    /// Training rows dropped by the embargo before the purge boundary.
    pub embargoed: usize,
}

/// The folds for rows with open times `times` and label ends `label_ends`.
pub fn walk_forward(
    times: &[i64],
    label_ends: &[i64],
    spec: &SplitSpec,
) -> Result<Vec<Fold>, String> {
    assert_eq!(times.len(), label_ends.len());
    if spec.folds == 0 {
        return Err("folds must be at least 1".into());
    }
    let mut distinct: Vec<i64> = times.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let blocks = spec.folds + 1;
    if distinct.len() < blocks * 2 {
        return Err(format!(
            "{} distinct bar times cannot make {} folds (need at least {} times, two per block)",
            distinct.len(),
            spec.folds,
            blocks * 2
        ));
    }
    // Block b covers distinct times [bounds[b], bounds[b + 1]).
    let bounds: Vec<i64> = (0..blocks)
        .map(|block| distinct[block * distinct.len() / blocks])
        .chain(std::iter::once(i64::MAX))
        .collect();
    let block_of = |time: i64| bounds.partition_point(|&bound| bound <= time) - 1;
    let last_time_before = |bound: i64| distinct[distinct.partition_point(|&t| t < bound) - 1];

    let mut folds = Vec::with_capacity(spec.folds);
    for number in 1..=spec.folds {
        let test_start = bounds[number];
        let test_end = last_time_before(bounds[number + 1]);
        let first_train_block = match spec.window {
            Window::Expanding => 0,
            Window::Rolling => number.saturating_sub(spec.train_blocks.max(1)),
        };
        let mut fold = Fold {
            number,
            train: Vec::new(),
            test: Vec::new(),
            train_span: (i64::MAX, i64::MIN),
            test_span: (test_start, test_end),
            train_rows: 0,
            test_rows: 0,
            purged: 0,
            embargoed: 0,
        };
        let embargo_from = test_start.saturating_sub(spec.embargo_ms);
        for (row, (&time, &label_end)) in times.iter().zip(label_ends).enumerate() {
            let block = block_of(time);
            if block == number {
                fold.test.push(row);
                continue;
            }
            // Walk-forward: only blocks before the test block train.
            if block < first_train_block || block > number {
                continue;
            }
            if label_end >= test_start {
                fold.purged += 1;
                continue;
            }
            if label_end >= embargo_from {
                fold.embargoed += 1;
                continue;
            }
            fold.train_span.0 = fold.train_span.0.min(time);
            fold.train_span.1 = fold.train_span.1.max(time);
            fold.train.push(row);
        }
        fold.train_rows = fold.train.len();
        fold.test_rows = fold.test.len();
        if fold.train.is_empty() {
            return Err(format!(
                "fold {number} has no training rows left after the purge; use fewer folds or more history"
            ));
        }
        folds.push(fold);
    }
    Ok(folds)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    /// Two symbols, hourly, labels looking `horizon` bars ahead.
    fn rows(bars: i64, horizon: i64) -> (Vec<i64>, Vec<i64>) {
        let mut times = Vec::new();
        let mut ends = Vec::new();
        for bar in 0..bars {
            for _symbol in 0..2 {
                times.push(bar * HOUR);
                ends.push((bar + horizon) * HOUR);
            }
        }
        (times, ends)
    }

    fn spec(folds: usize, window: Window) -> SplitSpec {
        SplitSpec {
            folds,
            window,
            train_blocks: 2,
            embargo_ms: 4 * HOUR,
        }
    }

    #[test]
    fn no_training_label_window_reaches_its_test_block() {
        let (times, ends) = rows(1_000, 4);
        for window in [Window::Expanding, Window::Rolling] {
            let folds = walk_forward(&times, &ends, &spec(4, window)).unwrap();
            assert_eq!(folds.len(), 4);
            for fold in &folds {
                let (test_start, test_end) = fold.test_span;
                for &row in &fold.train {
                    assert!(
                        ends[row] < test_start,
                        "fold {}: training row at {} has its label window end at {} inside the test block from {}",
                        fold.number,
                        times[row],
                        ends[row],
                        test_start
                    );
                    // The embargo: 4 more bars of distance beyond the purge.
                    assert!(times[row] < test_start - 8 * HOUR);
                }
                for &row in &fold.test {
                    assert!((test_start..=test_end).contains(&times[row]));
                }
                // Exactly the last 4 bars before the test block are purged and the 4 before
                // them embargoed, for both symbols.
                assert_eq!(fold.purged, 8, "fold {}", fold.number);
                assert_eq!(fold.embargoed, 8, "fold {}", fold.number);
                assert_eq!(fold.train_span.1, test_start - 9 * HOUR);
            }
            // Consecutive test blocks tile the later part of history without overlap.
            for pair in folds.windows(2) {
                assert!(pair[0].test_span.1 < pair[1].test_span.0);
            }
        }
    }

    #[test]
    fn expanding_grows_and_rolling_slides() {
        let (times, ends) = rows(500, 4);
        let expanding = walk_forward(&times, &ends, &spec(4, Window::Expanding)).unwrap();
        assert!(
            expanding
                .windows(2)
                .all(|pair| pair[0].train_rows < pair[1].train_rows)
        );
        assert!(expanding.iter().all(|fold| fold.train_span.0 == 0));
        let rolling = walk_forward(&times, &ends, &spec(4, Window::Rolling)).unwrap();
        assert_eq!(rolling[0].train_span.0, 0);
        assert!(rolling[3].train_span.0 > 0);
        assert_eq!(rolling[2].train_rows, rolling[3].train_rows);
    }

    #[test]
    fn a_label_reaching_past_a_gap_is_purged_by_its_end_not_its_bar_count() {
        // Bar 10 is 200 bars before the test block, but its label ends inside it.
        let (mut times, mut ends) = rows(300, 4);
        ends[20] = 299 * HOUR;
        let folds = walk_forward(&times, &ends, &spec(1, Window::Expanding)).unwrap();
        assert!(!folds[0].train.contains(&20));
        times.truncate(5);
        ends.truncate(5);
        let error = walk_forward(&times, &ends, &spec(4, Window::Expanding)).unwrap_err();
        assert!(error.contains("cannot make 4 folds"), "{error}");
    }
}

//! Tree models: gradient-boosted trees (`gbdt`: softmax multiclass, one tree per class per
//! round, as LightGBM's `multiclass`) and a random forest (`forest`: bootstrap samples, a
//! random subset of the features at each split, Gini impurity, leaf class distributions
//! averaged, as scikit-learn's `RandomForestClassifier`).
//!
//! Both grow trees depth-first from histograms of features binned once into at most 255
//! quantile bins: a node's best split is a scan over its histogram, and a boosted tree gets the
//! larger child's histogram by subtracting the smaller child's from its parent's. Row weights
//! (`balance: weights`) enter every sum, and `min_leaf` bounds the weight in a leaf, so a row
//! of weight 2 counts as two rows. Work is split over features (histograms), trees (the
//! forest; a round's class trees grow side by side) or subtrees (the cores of the class trees
//! done first go to the others' histograms, and to their large left subtrees, grown apart and
//! appended in node order), each piece summed in a fixed row order: the model is the same on
//! any core count.

use serde::{Deserialize, Serialize};

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::util::parallel;
use crate::util::rng::{Rng, mix};

/// Most bins per feature (codes fit a byte).
pub const MAX_BINS: usize = 255;

/// One tree: parallel arrays over nodes; node 0 is the root. A node with `feature < 0` is a
/// leaf whose `outputs` values start at `value[node * outputs]`; an inner node sends a row
/// left when its feature is at most `threshold` (NaN goes right).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub feature: Vec<i32>,
    pub threshold: Vec<f32>,
    pub left: Vec<u32>,
    pub right: Vec<u32>,
    pub value: Vec<f32>,
    /// The bin code the threshold came from (training only: rows are binned already).
    #[serde(skip)]
    bin: Vec<u8>,
    /// Each inner node's gain (training only: feature importances, summed in node order).
    #[serde(skip)]
    gain: Vec<f64>,
}

impl Tree {
    fn new() -> Self {
        Self {
            feature: Vec::new(),
            threshold: Vec::new(),
            left: Vec::new(),
            right: Vec::new(),
            value: Vec::new(),
            bin: Vec::new(),
            gain: Vec::new(),
        }
    }

    /// Appends `other`'s nodes (a subtree grown apart) after this tree's; returns the node
    /// its root becomes.
    fn append(&mut self, other: Tree) -> u32 {
        let offset = self.nodes() as u32;
        for (children, theirs) in [(&mut self.left, other.left), (&mut self.right, other.right)] {
            let shifted = theirs.into_iter().zip(&other.feature);
            children.extend(shifted.map(
                |(child, &feature)| {
                    if feature >= 0 { child + offset } else { child }
                },
            ));
        }
        self.feature.extend(other.feature);
        self.threshold.extend(other.threshold);
        self.value.extend(other.value);
        self.bin.extend(other.bin);
        self.gain.extend(other.gain);
        offset
    }

    /// Adds each inner node's gain to its feature's importance, in node order.
    fn add_importance(&self, importance: &mut [f64]) {
        for (&feature, &gain) in self.feature.iter().zip(&self.gain) {
            if feature >= 0 {
                importance[feature as usize] += gain;
            }
        }
    }

    pub fn nodes(&self) -> usize {
        self.feature.len()
    }

    /// The leaf a row of raw (standardised) features reaches.
    pub fn leaf(&self, row: &[f32]) -> usize {
        let mut node = 0;
        while self.feature[node] >= 0 {
            let value = row[self.feature[node] as usize];
            node = if value <= self.threshold[node] {
                self.left[node]
            } else {
                self.right[node]
            } as usize;
        }
        node
    }

    /// The leaf row `row` of a binned set reaches.
    fn leaf_of_codes(&self, binned: &Binned, row: usize) -> usize {
        let mut node = 0;
        while self.feature[node] >= 0 {
            let code = binned.column(self.feature[node] as usize)[row];
            node = if code <= self.bin[node] {
                self.left[node]
            } else {
                self.right[node]
            } as usize;
        }
        node
    }
}

/// Which ensemble, and how its trees combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnsembleKind {
    /// Class scores `init[k] + sum of class k's trees` (tree `t` is class `t % classes`),
    /// then softmax.
    Boosted,
    /// The mean of the trees' leaf class distributions.
    Forest,
}

/// A fitted tree ensemble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ensemble {
    pub kind: EnsembleKind,
    pub inputs: usize,
    pub classes: usize,
    /// Boosted: each class's starting score (the log of its weighted share).
    pub init: Vec<f32>,
    pub trees: Vec<Tree>,
    /// Total split gain by feature, summing to 1 (all zero when no tree split).
    pub importance: Vec<f64>,
    /// Boosted: the rounds kept (early stopping's best) and the rounds run.
    pub rounds: usize,
    pub rounds_run: usize,
}

impl Ensemble {
    /// The shapes agree with `features` inputs and `classes` classes, and every tree is a tree
    /// (children after their parent, features in range), so predicting cannot fail: for a
    /// model read from a file.
    pub fn check(&self, features: usize, classes: usize) -> Result<(), String> {
        if self.inputs != features || self.classes != classes {
            return Err(format!(
                "the trees read {} inputs into {} classes; the model lists {features} features and {classes} classes",
                self.inputs, self.classes
            ));
        }
        let outputs = match self.kind {
            EnsembleKind::Boosted => {
                if self.init.len() != classes || !self.trees.len().is_multiple_of(classes.max(1)) {
                    return Err(format!(
                        "{} starting scores and {} trees for {classes} classes",
                        self.init.len(),
                        self.trees.len()
                    ));
                }
                1
            }
            EnsembleKind::Forest => classes,
        };
        for (index, tree) in self.trees.iter().enumerate() {
            let nodes = tree.feature.len();
            let consistent = nodes > 0
                && [tree.threshold.len(), tree.left.len(), tree.right.len()]
                    .iter()
                    .all(|&len| len == nodes)
                && tree.value.len() == nodes * outputs
                && (0..nodes).all(|node| {
                    let feature = tree.feature[node];
                    feature < 0
                        || ((feature as usize) < features
                            && (tree.left[node] as usize) > node
                            && (tree.left[node] as usize) < nodes
                            && (tree.right[node] as usize) > node
                            && (tree.right[node] as usize) < nodes)
                });
            if !consistent {
                return Err(format!("tree {index} is not a well-formed tree"));
            }
        }
        Ok(())
    }

    /// Class probabilities for `rows` rows of `x` (row-major, `inputs` wide).
    pub fn predict(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let k = self.classes;
        let mut out = vec![0f32; rows * k];
        for row in 0..rows {
            let features = &x[row * self.inputs..(row + 1) * self.inputs];
            let probabilities = &mut out[row * k..(row + 1) * k];
            match self.kind {
                EnsembleKind::Boosted => {
                    let mut scores: Vec<f64> = self.init.iter().map(|&v| f64::from(v)).collect();
                    for (index, tree) in self.trees.iter().enumerate() {
                        let leaf = tree.leaf(features);
                        scores[index % k] += f64::from(tree.value[leaf]);
                    }
                    softmax_into(&scores, probabilities);
                }
                EnsembleKind::Forest => {
                    let mut sums = vec![0f64; k];
                    for tree in &self.trees {
                        let leaf = tree.leaf(features);
                        for (sum, value) in sums.iter_mut().zip(&tree.value[leaf * k..]) {
                            *sum += f64::from(*value);
                        }
                    }
                    let count = self.trees.len().max(1) as f64;
                    for (p, sum) in probabilities.iter_mut().zip(&sums) {
                        *p = (sum / count) as f32;
                    }
                }
            }
        }
        out
    }
}

fn softmax_into(scores: &[f64], out: &mut [f32]) {
    let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // Each exponential taken once (on the stack for up to 16 classes).
    let (mut stack, mut heap) = ([0f64; 16], Vec::new());
    let exps: &mut [f64] = if scores.len() <= stack.len() {
        &mut stack[..scores.len()]
    } else {
        heap.resize(scores.len(), 0.0);
        &mut heap
    };
    for (e, s) in exps.iter_mut().zip(scores) {
        *e = (s - top).exp();
    }
    let sum: f64 = exps.iter().sum();
    for (p, e) in out.iter_mut().zip(exps.iter()) {
        *p = (e / sum) as f32;
    }
}

/// `gbdt`'s params.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoostParams {
    /// Most rounds (each adds one tree per class).
    pub iterations: usize,
    pub learning_rate: f64,
    pub max_depth: usize,
    /// Least total row weight in a leaf.
    pub min_leaf: f64,
    /// L2 penalty on leaf values.
    pub l2: f64,
    /// Stop when the validation loss has not improved for this many rounds (0: never).
    pub early_stopping: usize,
}

/// `forest`'s params.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ForestParams {
    pub trees: usize,
    pub max_depth: usize,
    /// Least total row weight in a leaf.
    pub min_leaf: f64,
    /// Features tried at each split.
    pub max_features: MaxFeatures,
    pub bootstrap: bool,
    pub seed: u64,
}

/// How many features a forest tries at each split: a count, or a rule of the feature count
/// as scikit-learn's (`sqrt`, its classifier's default: the integer part of the square root,
/// at least 1; `log2`; `all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MaxFeatures {
    Count(usize),
    Rule(FeatureRule),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureRule {
    Sqrt,
    Log2,
    All,
}

impl MaxFeatures {
    pub fn count(self, features: usize) -> usize {
        let count = match self {
            MaxFeatures::Count(count) => count,
            MaxFeatures::Rule(FeatureRule::Sqrt) => (features as f64).sqrt() as usize,
            MaxFeatures::Rule(FeatureRule::Log2) => (features as f64).log2() as usize,
            MaxFeatures::Rule(FeatureRule::All) => features,
        };
        count.clamp(1, features.max(1))
    }
}

/// Features binned for training: per-feature thresholds and feature-major codes.
#[derive(Debug, Clone)]
pub struct Binned {
    pub thresholds: Vec<Vec<f32>>,
    /// `codes[feature * rows + row]`: how many thresholds lie below the value (NaN: one more
    /// than there are thresholds).
    pub codes: Vec<u8>,
    pub rows: usize,
}

impl Binned {
    /// Thresholds from `fit_rows` of `x` (`dim` wide); codes for `rows`, in that order.
    pub fn new(x: &[f32], dim: usize, fit_rows: &[usize], rows: &[usize], threads: usize) -> Self {
        let thresholds: Vec<Vec<f32>> = parallel::map(dim, threads, |feature| {
            feature_thresholds(x, dim, fit_rows, feature)
        });
        let per_feature: Vec<Vec<u8>> = parallel::map(dim, threads, |feature| {
            let cuts = &thresholds[feature];
            rows.iter()
                .map(|&row| {
                    let value = x[row * dim + feature];
                    if value.is_nan() {
                        cuts.len() as u8
                    } else {
                        cuts.partition_point(|&cut| cut < value) as u8
                    }
                })
                .collect()
        });
        Self {
            thresholds,
            codes: per_feature.concat(),
            rows: rows.len(),
        }
    }

    fn features(&self) -> usize {
        self.thresholds.len()
    }

    fn column(&self, feature: usize) -> &[u8] {
        &self.codes[feature * self.rows..(feature + 1) * self.rows]
    }
}

/// Up to `MAX_BINS - 1` thresholds, each halfway between two neighbouring distinct values of
/// (a sample of) the rows: between every pair when there are few, else after the values at
/// evenly spaced quantiles. Halfway, so no training value sits on a threshold, and a value
/// computed a rounding step differently elsewhere (ONNX Runtime) routes the same.
fn feature_thresholds(x: &[f32], dim: usize, rows: &[usize], feature: usize) -> Vec<f32> {
    let step = (rows.len() / 200_000).max(1);
    let mut values: Vec<f32> = rows
        .iter()
        .step_by(step)
        .map(|&row| x[row * dim + feature])
        .filter(|v| !v.is_nan())
        .collect();
    values.sort_by(f32::total_cmp);
    let mut distinct = values.clone();
    distinct.dedup();
    let lower: Vec<f32> = if distinct.len() <= MAX_BINS {
        distinct[..distinct.len().saturating_sub(1)].to_vec()
    } else {
        let mut cuts: Vec<f32> = (1..MAX_BINS)
            .map(|i| values[i * values.len() / MAX_BINS])
            .collect();
        cuts.dedup();
        cuts
    };
    lower
        .into_iter()
        .filter_map(|below| {
            // The next distinct value above `below`.
            let above = distinct[distinct.partition_point(|&v| v <= below)..]
                .first()
                .copied()?;
            let middle = ((f64::from(below) + f64::from(above)) / 2.0) as f32;
            Some(if middle > below && middle < above {
                middle
            } else {
                below
            })
        })
        .collect()
}

/// How a tree scores splits and values leaves, over per-row statistics `width` wide.
#[derive(Clone, Copy)]
enum Criterion {
    /// (gradient, hessian, weight): Newton gain, leaf `-G / (H + l2) x rate`.
    Newton { l2: f64, rate: f64 },
    /// One weight per class: Gini impurity decrease, leaf the class shares.
    Gini { classes: usize },
}

impl Criterion {
    fn width(self) -> usize {
        match self {
            Criterion::Newton { .. } => 3,
            Criterion::Gini { classes } => classes,
        }
    }

    fn weight(self, stats: &[f64]) -> f64 {
        match self {
            Criterion::Newton { .. } => stats[2],
            Criterion::Gini { .. } => stats.iter().sum(),
        }
    }

    /// The node's own score: the split's gain is the children's less the parent's.
    fn score(self, stats: &[f64]) -> f64 {
        match self {
            Criterion::Newton { l2, .. } => {
                let denominator = stats[1] + l2;
                if denominator <= 0.0 {
                    0.0
                } else {
                    stats[0] * stats[0] / denominator
                }
            }
            Criterion::Gini { .. } => {
                let total: f64 = stats.iter().sum();
                if total <= 0.0 {
                    0.0
                } else {
                    stats.iter().map(|s| s * s).sum::<f64>() / total
                }
            }
        }
    }

    fn leaf(self, stats: &[f64], out: &mut Vec<f32>) {
        match self {
            Criterion::Newton { l2, rate } => {
                let denominator = stats[1] + l2;
                out.push(if denominator <= 0.0 {
                    0.0
                } else {
                    (-stats[0] / denominator * rate) as f32
                });
            }
            Criterion::Gini { .. } => {
                let total: f64 = stats.iter().sum();
                out.extend(stats.iter().map(
                    |s| {
                        if total > 0.0 { (s / total) as f32 } else { 0.0 }
                    },
                ));
            }
        }
    }
}

/// What one tree is grown from.
struct Grow<'a> {
    binned: &'a Binned,
    /// Per row of `binned`, `lanes` statistics as floats (summed in doubles): the booster's
    /// (gradient, hessian) when every weight is 1 (no `balance: weights`: a bin's weight is
    /// then its count of rows, and a pass reads half as much), else (gradient, hessian,
    /// weight, 0); the forest's weight per class (three classes padded to four).
    values: &'a [f32],
    lanes: usize,
    criterion: Criterion,
    max_depth: usize,
    min_leaf: f64,
    /// Features tried per split (with the tree's generator), or all.
    sample: Option<(usize, &'a mut Rng)>,
    threads: Cores<'a>,
    /// Histograms no longer needed, reused rather than allocated and zeroed again.
    spare: Vec<Histogram>,
    /// Each leaf's rows (the leaf by node of the tree being grown).
    leaf_rows: Vec<(u32, Vec<u32>)>,
    /// A node's statistics gathered in its rows' order (the buffer reused from node to node).
    gathered: Vec<f32>,
}

/// The `LANES` values of each of `rows`, in that order, into `out`.
fn gather<const LANES: usize>(values: &[f32], rows: &[u32], out: &mut Vec<f32>) {
    let (by_row, _) = values.as_chunks::<LANES>();
    out.clear();
    out.extend(rows.iter().flat_map(|&row| by_row[row as usize]));
}

/// How a node's rows are found in a column: one run of it (read in place), or listed.
enum NodeRows<'r> {
    Run(std::ops::Range<usize>),
    Listed(&'r [u32]),
}

/// The histograms of `G` features at once, into `hists` (`G x SLOTS x 3`): each row's `L`
/// statistics (in the order of `rows`) are read once and added into the bin of its code in
/// each of the `G` `columns`, so the rows and their statistics are read once per `G`
/// features, not once per feature. With two lanes, the booster's (gradient, hessian), a bin's
/// third cell is its count of rows (its weight, every weight being 1); with four, the first
/// three lanes are the cells. Each bin is summed in row order: the same sums as one feature
/// at a time.
#[inline(always)]
fn sum_group<const G: usize, const L: usize>(
    columns: [&[u8]; G],
    rows: &NodeRows,
    values: &[[f32; L]],
    hists: &mut [f64],
) {
    let mut sums = [[[0f64; L]; SLOTS]; G];
    let mut counts = [[0u32; SLOTS]; G];
    match rows {
        NodeRows::Run(run) => {
            let columns = columns.map(|column| &column[run.clone()]);
            for (at, value) in values.iter().enumerate() {
                for k in 0..G {
                    let code = columns[k][at] as usize;
                    for lane in 0..L {
                        sums[k][code][lane] += f64::from(value[lane]);
                    }
                    if L == 2 {
                        counts[k][code] += 1;
                    }
                }
            }
        }
        NodeRows::Listed(rows) => {
            for (&row, value) in rows.iter().zip(values) {
                for k in 0..G {
                    let code = columns[k][row as usize] as usize;
                    for lane in 0..L {
                        sums[k][code][lane] += f64::from(value[lane]);
                    }
                    if L == 2 {
                        counts[k][code] += 1;
                    }
                }
            }
        }
    }
    for ((hist, sums), counts) in hists.chunks_exact_mut(SLOTS * 3).zip(&sums).zip(&counts) {
        for ((cells, sum), &count) in hist.chunks_exact_mut(3).zip(sums).zip(counts) {
            if L == 2 {
                cells.copy_from_slice(&[sum[0], sum[1], f64::from(count)]);
            } else {
                cells.copy_from_slice(&sum[..3]);
            }
        }
    }
}

/// [`sum_group`] over `features` (at most [`GROUP`]).
fn sum_features<const L: usize>(
    binned: &Binned,
    features: &[usize],
    rows: &NodeRows,
    values: &[[f32; L]],
    hists: &mut [f64],
) {
    fn columns<'b, const G: usize>(binned: &'b Binned, features: &[usize]) -> [&'b [u8]; G] {
        std::array::from_fn(|k| binned.column(features[k]))
    }
    match features.len() {
        1 => sum_group::<1, L>(columns(binned, features), rows, values, hists),
        2 => sum_group::<2, L>(columns(binned, features), rows, values, hists),
        3 => sum_group::<3, L>(columns(binned, features), rows, values, hists),
        4 => sum_group::<4, L>(columns(binned, features), rows, values, hists),
        5 => sum_group::<5, L>(columns(binned, features), rows, values, hists),
        _ => unreachable!("groups are of 1 to {GROUP} features"),
    }
}

/// The threads a node's histogram may use.
#[derive(Clone, Copy)]
enum Cores<'a> {
    Fixed(usize),
    /// `cores` shared by the trees and subtrees `growing` at that moment: a round's class
    /// trees take unequal times, and the cores the finished ones free go to the others'
    /// histograms and subtrees.
    Shared {
        cores: usize,
        growing: &'a AtomicUsize,
    },
}

/// A core taken from [`Cores::Shared`] for a subtree, given back when dropped.
struct Claimed<'a>(&'a AtomicUsize);

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Subtrees of fewer rows than this grow on the core that split their parent (64 in unit
/// tests, so that their small trees grow subtrees apart at every depth).
const SPAWN_AT: usize = if cfg!(test) { 64 } else { 8_192 };

impl<'a> Cores<'a> {
    /// A core for a subtree of `rows` rows, if one is free and the subtree is worth a thread.
    fn claim(self, rows: usize) -> Option<Claimed<'a>> {
        match self {
            Cores::Shared { cores, growing } if rows >= SPAWN_AT => growing
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |busy| {
                    (busy < cores).then_some(busy + 1)
                })
                .ok()
                .map(|_| Claimed(growing)),
            _ => None,
        }
    }

    fn now(self) -> usize {
        match self {
            Cores::Fixed(threads) => threads,
            Cores::Shared { cores, growing } => {
                (cores / growing.load(Ordering::Relaxed).max(1)).max(1)
            }
        }
    }
}

/// A node's histogram: `features x bins x width`, bins `MAX_BINS + 1` per feature (the NaN
/// code included).
type Histogram = Vec<f64>;
const SLOTS: usize = MAX_BINS + 1;
/// Below this many row-features a histogram stays on one thread (starting one costs more).
const SPLIT_AT: usize = 250_000;
/// Features summed in one pass over a node's rows: their bins (five features' pairs and
/// counts, 25 KB) stay in the L1 cache.
const GROUP: usize = 5;

impl Grow<'_> {
    /// The node's histograms over `features`, a few features a pass over the rows (their
    /// bins stay in cache: [`sum_group`]), the features split over threads; each histogram is
    /// summed by one thread in row order, so the sums are the same on any thread count and
    /// any grouping. The node's statistics are gathered once, in row order (read in place
    /// when its rows are one run); the sums are doubles.
    fn histogram(&mut self, rows: &[u32], features: &[usize]) -> Histogram {
        let width = self.criterion.width();
        let size = SLOTS * width;
        let mut out = self.spare.pop().unwrap_or_default();
        out.resize(features.len() * size, 0.0);
        let lanes = self.lanes;
        // The node's rows one run of the column (the root, when every row trains): the
        // codes read in place, no gather.
        let run = match (rows.first(), rows.last()) {
            (Some(&first), Some(&last))
                if last.checked_sub(first).map(|span| span as usize + 1) == Some(rows.len()) =>
            {
                let consecutive = rows.windows(2).all(|pair| pair[1] == pair[0] + 1);
                consecutive.then_some(first as usize..last as usize + 1)
            }
            _ => None,
        };
        let mut gathered = std::mem::take(&mut self.gathered);
        let values: &[f32] = match &run {
            Some(run) => &self.values[run.start * lanes..run.end * lanes],
            None => {
                match lanes {
                    2 => gather::<2>(self.values, rows, &mut gathered),
                    4 => gather::<4>(self.values, rows, &mut gathered),
                    _ => {
                        gathered.clear();
                        for &row in rows {
                            let at = row as usize * lanes;
                            gathered.extend_from_slice(&self.values[at..at + lanes]);
                        }
                    }
                }
                &gathered
            }
        };
        let node_rows = match &run {
            Some(run) => NodeRows::Run(run.clone()),
            None => NodeRows::Listed(rows),
        };
        // Features `first..` (positions in `features`) into `hists` (a spare histogram's
        // cells, overwritten): the booster's pairs and the four-lane statistics up to
        // [`GROUP`] features a pass, in groups as even as can be; other widths one feature at
        // a time.
        let span = |first: usize, hists: &mut [f64]| {
            let features = &features[first..first + hists.len() / size];
            if width == 3 && (lanes == 2 || lanes == 4) {
                let groups = features.len().div_ceil(GROUP);
                let mut done = 0;
                for group in 0..groups {
                    let take = (features.len() - done).div_ceil(groups - group);
                    let group_features = &features[done..done + take];
                    let hists = &mut hists[done * size..(done + take) * size];
                    if lanes == 2 {
                        let (pairs, _) = values.as_chunks::<2>();
                        sum_features(self.binned, group_features, &node_rows, pairs, hists);
                    } else {
                        let (quads, _) = values.as_chunks::<4>();
                        sum_features(self.binned, group_features, &node_rows, quads, hists);
                    }
                    done += take;
                }
            } else {
                hists.fill(0.0);
                for (&feature, hist) in features.iter().zip(hists.chunks_mut(size)) {
                    let codes = self.binned.column(feature);
                    for (&row, values) in rows.iter().zip(values.chunks_exact(lanes)) {
                        let slot = codes[row as usize] as usize * width;
                        for (cell, value) in hist[slot..slot + width].iter_mut().zip(values) {
                            *cell += f64::from(*value);
                        }
                    }
                }
            }
        };
        let threads = if rows.len() * features.len() < SPLIT_AT {
            1
        } else {
            self.threads.now().clamp(1, features.len().max(1))
        };
        if threads == 1 {
            span(0, &mut out);
        } else {
            let per = features.len().div_ceil(threads);
            std::thread::scope(|scope| {
                for (chunk, hists) in out.chunks_mut(per * size).enumerate() {
                    let span = &span;
                    scope.spawn(move || span(chunk * per, hists));
                }
            });
        }
        self.gathered = gathered;
        out
    }

    /// The best split of a node over `features` (whose histograms `hist` holds in that order):
    /// (feature, bin, gain), if any split gains and leaves `min_leaf` on both sides.
    fn best_split(
        &self,
        hist: &[f64],
        features: &[usize],
        total: &[f64],
    ) -> Option<(usize, u8, f64)> {
        let width = self.criterion.width();
        let parent = self.criterion.score(total);
        // (index into `features`, bin, gain)
        let mut best: Option<(usize, u8, f64)> = None;
        if let Criterion::Newton { l2, .. } = self.criterion {
            // The booster's scan, on scalars. A bin no row fell in changes nothing: skipped
            // (the split after the bin before it is the same split, and ties keep the first).
            let score = |g: f64, h: f64| if h + l2 > 0.0 { g * g / (h + l2) } else { 0.0 };
            for (index, &feature) in features.iter().enumerate() {
                let bins = self.binned.thresholds[feature].len();
                let hist = &hist[index * SLOTS * 3..(index + 1) * SLOTS * 3];
                let (mut g, mut h, mut w) = (0.0, 0.0, 0.0);
                for (bin, cells) in hist[..bins * 3].chunks_exact(3).enumerate() {
                    if cells[2] == 0.0 {
                        continue;
                    }
                    g += cells[0];
                    h += cells[1];
                    w += cells[2];
                    let (gr, hr, wr) = (total[0] - g, total[1] - h, total[2] - w);
                    if w < self.min_leaf || wr < self.min_leaf || h < 1e-3 || hr < 1e-3 {
                        continue;
                    }
                    let gain = score(g, h) + score(gr, hr) - parent;
                    if gain > 1e-12 && best.is_none_or(|(_, _, top)| gain > top) {
                        best = Some((index, bin as u8, gain));
                    }
                }
            }
            return best;
        }
        let mut left = vec![0f64; width];
        let mut right = vec![0f64; width];
        for (index, &feature) in features.iter().enumerate() {
            let bins = self.binned.thresholds[feature].len();
            left.iter_mut().for_each(|v| *v = 0.0);
            let hist = &hist[index * SLOTS * width..(index + 1) * SLOTS * width];
            // Split after bin `bin`: codes 0..=bin left (the NaN code, `bins`, always right).
            for bin in 0..bins {
                for (l, h) in left.iter_mut().zip(&hist[bin * width..(bin + 1) * width]) {
                    *l += h;
                }
                for ((r, t), l) in right.iter_mut().zip(total).zip(&left) {
                    *r = t - l;
                }
                let (weight_left, weight_right) =
                    (self.criterion.weight(&left), self.criterion.weight(&right));
                if weight_left < self.min_leaf || weight_right < self.min_leaf {
                    continue;
                }
                if let Criterion::Newton { .. } = self.criterion
                    && (left[1] < 1e-3 || right[1] < 1e-3)
                {
                    continue;
                }
                let gain = self.criterion.score(&left) + self.criterion.score(&right) - parent;
                if gain > 1e-12 && best.is_none_or(|(_, _, top)| gain > top) {
                    best = Some((index, bin as u8, gain));
                }
            }
        }
        best
    }

    fn features_for_node(&mut self) -> Vec<usize> {
        let all = self.binned.features();
        match &mut self.sample {
            Some((count, rng)) if *count < all => {
                // A partial Fisher-Yates shuffle: `count` distinct features, kept in order.
                let mut pool: Vec<usize> = (0..all).collect();
                for i in 0..*count {
                    let j = i + (rng.next_u64() % (all - i) as u64) as usize;
                    pool.swap(i, j);
                }
                let mut chosen = pool[..*count].to_vec();
                chosen.sort_unstable();
                chosen
            }
            _ => (0..all).collect(),
        }
    }

    /// Grows the subtree of `rows` into `tree`; returns its node. `hist` is the node's
    /// histogram over every feature when the caller has it (boosting's subtraction).
    fn grow(
        &mut self,
        tree: &mut Tree,
        rows: Vec<u32>,
        total: Vec<f64>,
        hist: Option<Histogram>,
        depth: usize,
    ) -> u32 {
        let node = tree.nodes() as u32;
        tree.feature.push(-1);
        tree.threshold.push(0.0);
        tree.left.push(0);
        tree.right.push(0);
        tree.bin.push(0);
        tree.gain.push(0.0);
        let outputs = match self.criterion {
            Criterion::Newton { .. } => 1,
            Criterion::Gini { classes } => classes,
        };
        let criterion = self.criterion;
        let make_leaf = |grow: &mut Self, tree: &mut Tree, mut rows: Vec<u32>| {
            criterion.leaf(&total, &mut tree.value);
            // A leaf's rows are kept until the tree is done: not in its parent's capacity.
            rows.shrink_to_fit();
            grow.leaf_rows.push((node, rows));
        };
        let weight = self.criterion.weight(&total);
        if depth >= self.max_depth || weight < 2.0 * self.min_leaf || rows.len() < 2 {
            self.spare.extend(hist);
            make_leaf(self, tree, rows);
            return node;
        }
        let all_features = self.sample.is_none();
        let features = self.features_for_node();
        let hist = match hist {
            Some(hist) if all_features => hist,
            given => {
                self.spare.extend(given);
                self.histogram(&rows, &features)
            }
        };
        let Some((index, bin, gain)) = self.best_split(&hist, &features, &total) else {
            self.spare.push(hist);
            make_leaf(self, tree, rows);
            return node;
        };
        let feature = features[index];
        tree.gain[node as usize] = gain;
        // Inner nodes hold zeros, so leaf values index by node.
        tree.value.extend(std::iter::repeat_n(0.0, outputs));
        let (left_rows, right_rows) = split_rows(rows, self.binned.column(feature), bin);
        // The children's totals from the split feature's histogram.
        let width = self.criterion.width();
        let mut left_total = vec![0f64; width];
        let hist_of = &hist[index * SLOTS * width..(index + 1) * SLOTS * width];
        for cells in hist_of[..(bin as usize + 1) * width].chunks_exact(width) {
            for (t, c) in left_total.iter_mut().zip(cells) {
                *t += c;
            }
        }
        let right_total: Vec<f64> = total.iter().zip(&left_total).map(|(t, l)| t - l).collect();
        // Boosting: the smaller child's histogram, and the larger's by subtraction.
        // (Children at the depth limit are leaves: no histogram for them.)
        let (left_hist, right_hist) = if all_features && depth + 1 < self.max_depth {
            let left_smaller = left_rows.len() <= right_rows.len();
            let small = self.histogram(
                if left_smaller {
                    &left_rows
                } else {
                    &right_rows
                },
                &features,
            );
            let mut large = hist;
            for (parent, small) in large.iter_mut().zip(&small) {
                *parent -= small;
            }
            if left_smaller {
                (Some(small), Some(large))
            } else {
                (Some(large), Some(small))
            }
        } else {
            self.spare.push(hist);
            (None, None)
        };
        // A free core (the booster's trees only: the forest's sampling draws in node order)
        // takes the left subtree when both children are large and split further.
        let claimed = (self.sample.is_none() && depth + 1 < self.max_depth)
            .then(|| self.threads.claim(left_rows.len().min(right_rows.len())))
            .flatten();
        let (left, right) = match claimed {
            // The left subtree grows on the free core, apart, and both subtrees are then
            // appended in the order they would have been grown in: the same tree.
            Some(claimed) => {
                let leaves_before = self.leaf_rows.len();
                let mut apart = Grow {
                    spare: Vec::new(),
                    leaf_rows: Vec::new(),
                    gathered: Vec::new(),
                    sample: None,
                    ..*self
                };
                let (mut left_tree, mut right_tree) = (Tree::new(), Tree::new());
                std::thread::scope(|scope| {
                    let worker = scope.spawn(|| {
                        let _claimed = claimed;
                        apart.grow(&mut left_tree, left_rows, left_total, left_hist, depth + 1);
                    });
                    self.grow(
                        &mut right_tree,
                        right_rows,
                        right_total,
                        right_hist,
                        depth + 1,
                    );
                    if let Err(panic) = worker.join() {
                        std::panic::resume_unwind(panic);
                    }
                });
                let left = tree.append(left_tree);
                let right = tree.append(right_tree);
                // The leaves' nodes: the right subtree's (added to ours) and the left's, moved
                // by where their subtrees went.
                for (leaf, _) in &mut self.leaf_rows[leaves_before..] {
                    *leaf += right;
                }
                let apart_leaves = apart.leaf_rows.into_iter();
                self.leaf_rows
                    .extend(apart_leaves.map(|(leaf, rows)| (leaf + left, rows)));
                (left, right)
            }
            None => {
                let left = self.grow(tree, left_rows, left_total, left_hist, depth + 1);
                let right = self.grow(tree, right_rows, right_total, right_hist, depth + 1);
                (left, right)
            }
        };
        let index = node as usize;
        tree.feature[index] = feature as i32;
        tree.threshold[index] = self.binned.thresholds[feature][bin as usize];
        tree.bin[index] = bin;
        tree.left[index] = left;
        tree.right[index] = right;
        node
    }
}

/// `rows` whose code is at most `bin` (in `rows`' own buffer), and the others, in order.
/// Without a branch: each row is written to both sides and only one side's length moves on.
fn split_rows(mut rows: Vec<u32>, codes: &[u8], bin: u8) -> (Vec<u32>, Vec<u32>) {
    let mut right = vec![0u32; rows.len()];
    let (mut on_left, mut on_right) = (0, 0);
    for at in 0..rows.len() {
        let row = rows[at];
        let goes_left = usize::from(codes[row as usize] <= bin);
        // `on_left <= at`: a row is read before its place is written over.
        rows[on_left] = row;
        right[on_right] = row;
        on_left += goes_left;
        on_right += 1 - goes_left;
    }
    rows.truncate(on_left);
    right.truncate(on_right);
    (rows, right)
}

/// Gains to shares.
fn normalise(importance: &mut [f64]) {
    let total: f64 = importance.iter().sum();
    if total > 0.0 {
        importance.iter_mut().for_each(|v| *v /= total);
    }
}

/// What a boosted fit reports after each round.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub round: usize,
    pub train_loss: f64,
    pub valid_loss: Option<f64>,
}

/// Boosts on `train` rows of `binned` (indices into it), stopping early on `valid` rows.
/// `y` and `weights` are per binned row.
#[allow(clippy::too_many_arguments)]
pub fn fit_boosted(
    binned: &Binned,
    y: &[u8],
    weights: &[f32],
    classes: usize,
    train: &[u32],
    valid: &[u32],
    params: &BoostParams,
    threads: usize,
    on_round: &mut dyn FnMut(Round),
    cancelled: &dyn Fn() -> bool,
) -> Result<Ensemble, String> {
    let k = classes;
    let n = binned.rows;
    // Start from the log of each class's weighted share in the training rows.
    let mut share = vec![0f64; k];
    for &row in train {
        share[y[row as usize] as usize] += f64::from(weights[row as usize]);
    }
    let total: f64 = share.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    let init: Vec<f32> = share
        .iter()
        .map(|s| ((s / total).max(1e-12)).ln() as f32)
        .collect();
    // Each class's scores by row (a class tree adds to its own).
    let mut by_class: Vec<Vec<f64>> = init.iter().map(|&v| vec![f64::from(v); n]).collect();
    // The statistics of the trees growing at once, by row: buffers reused from tree to tree.
    let buffers = std::sync::Mutex::new(Vec::<Vec<f32>>::new());
    let mut ensemble = Ensemble {
        kind: EnsembleKind::Boosted,
        inputs: binned.features(),
        classes: k,
        init,
        trees: Vec::new(),
        importance: vec![0.0; binned.features()],
        rounds: 0,
        rounds_run: 0,
    };
    let criterion = Criterion::Newton {
        l2: params.l2,
        rate: params.learning_rate,
    };
    // The hessian's K / (K - 1) as LightGBM's multiclass objective scales it.
    let factor = if k > 1 {
        k as f64 / (k as f64 - 1.0)
    } else {
        1.0
    };
    // Per-row work in fixed blocks of rows, the blocks over threads and their sums added in
    // block order: the same on any thread count.
    const BLOCK: usize = 1 << 14;
    let (mut best_loss, mut best_round) = (f64::INFINITY, 0usize);
    let mut importance_at_best = ensemble.importance.clone();
    let unit_weights = train.iter().all(|&row| weights[row as usize] == 1.0);
    // The class trees and subtrees growing now (their histograms and subtrees share the cores).
    let growing = AtomicUsize::new(0);
    // The probabilities of `rows` (by position, into `out`) and their mean log loss, in one
    // pass: the training rows' loss of a round comes with the next round's probabilities.
    let softmax_rows = |by_class: &[Vec<f64>], rows: &[u32], out: &mut Vec<f32>| -> f64 {
        out.resize(rows.len() * k, 0.0);
        let parts = parallel::map_chunks(out, BLOCK * k, threads, |block, out| {
            let rows = &rows[block * BLOCK..((block + 1) * BLOCK).min(rows.len())];
            let mut row_scores = vec![0f64; k];
            let (mut sum, mut weight) = (0.0, 0.0);
            for (p, &row) in out.chunks_exact_mut(k).zip(rows) {
                let row = row as usize;
                for (score, class) in row_scores.iter_mut().zip(by_class) {
                    *score = class[row];
                }
                softmax_into(&row_scores, p);
                let w = f64::from(weights[row]);
                sum -= w * f64::from(p[y[row] as usize]).max(1e-15).ln();
                weight += w;
            }
            (sum, weight)
        });
        let (mut sum, mut weight) = (0.0, 0.0);
        for (part_sum, part_weight) in parts {
            sum += part_sum;
            weight += part_weight;
        }
        sum / f64::max(weight, f64::MIN_POSITIVE)
    };
    let (mut probabilities, mut valid_probabilities) = (Vec::new(), Vec::new());
    softmax_rows(&by_class, train, &mut probabilities);
    for round in 0..params.iterations {
        if cancelled() {
            return Err("interrupted".into());
        }
        // The round's K trees are independent given the probabilities: grown in parallel
        // (the cores left over go to each tree's histograms and subtrees), each adding to its
        // class's scores, then kept in class order.
        let grown = parallel::map_chunks(&mut by_class, 1, threads.min(k), |class, slot| {
            let scores = &mut slot[0];
            let mut values = buffers
                .lock()
                .expect("no panic holds it")
                .pop()
                .unwrap_or_default();
            growing.fetch_add(1, Ordering::Relaxed);
            // Each training row's (gradient, hessian, weight), summed in doubles and kept as
            // floats for the histograms (the weight left out when it is always 1).
            let lanes = if unit_weights { 2 } else { 4 };
            values.resize(n * lanes, 0.0);
            let mut total = vec![0f64; 3];
            for (position, &row) in train.iter().enumerate() {
                let row = row as usize;
                let p = f64::from(probabilities[position * k + class]);
                let w = f64::from(weights[row]);
                let target = if y[row] as usize == class { 1.0 } else { 0.0 };
                let cells = [
                    w * (p - target),
                    (w * p * (1.0 - p) * factor).max(1e-16 * w),
                    w,
                ];
                for (t, c) in total.iter_mut().zip(cells) {
                    *t += c;
                }
                let floats = [cells[0] as f32, cells[1] as f32, cells[2] as f32, 0.0];
                values[row * lanes..(row + 1) * lanes].copy_from_slice(&floats[..lanes]);
            }
            let mut tree = Tree::new();
            let mut grow = Grow {
                binned,
                values: &values,
                lanes,
                criterion,
                max_depth: params.max_depth,
                min_leaf: params.min_leaf,
                sample: None,
                threads: Cores::Shared {
                    cores: threads.max(1),
                    growing: &growing,
                },
                spare: Vec::new(),
                leaf_rows: Vec::new(),
                gathered: Vec::new(),
            };
            grow.grow(&mut tree, train.to_vec(), total, None, 0);
            growing.fetch_sub(1, Ordering::Relaxed);
            for (leaf, rows) in grow.leaf_rows {
                let value = f64::from(tree.value[leaf as usize]);
                for row in rows {
                    scores[row as usize] += value;
                }
            }
            for &row in valid {
                let row = row as usize;
                scores[row] += f64::from(tree.value[tree.leaf_of_codes(binned, row)]);
            }
            buffers.lock().expect("no panic holds it").push(values);
            tree
        });
        for tree in grown {
            tree.add_importance(&mut ensemble.importance);
            ensemble.trees.push(tree);
        }
        let valid_loss =
            (!valid.is_empty()).then(|| softmax_rows(&by_class, valid, &mut valid_probabilities));
        let train_loss = softmax_rows(&by_class, train, &mut probabilities);
        on_round(Round {
            round: round + 1,
            train_loss,
            valid_loss,
        });
        ensemble.rounds_run = round + 1;
        let judged = valid_loss.unwrap_or(0.0);
        if valid_loss.is_none() || judged < best_loss {
            best_loss = judged;
            best_round = round + 1;
            importance_at_best.clone_from(&ensemble.importance);
        } else if params.early_stopping > 0 && round + 1 - best_round >= params.early_stopping {
            break;
        }
    }
    ensemble.trees.truncate(best_round * k);
    ensemble.rounds = best_round;
    ensemble.importance = importance_at_best;
    normalise(&mut ensemble.importance);
    Ok(ensemble)
}

/// Grows `params.trees` trees on bootstrap samples of every row of `binned`, in parallel over
/// trees; tree `t` draws from its own generator, so the forest is the same on any core count.
#[allow(clippy::too_many_arguments)]
pub fn fit_forest(
    binned: &Binned,
    y: &[u8],
    weights: &[f32],
    classes: usize,
    params: &ForestParams,
    threads: usize,
    on_tree: &(dyn Fn(usize) + Sync),
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Ensemble, String> {
    let n = binned.rows;
    let features = binned.features();
    let grown: Vec<Option<(Tree, Vec<f64>)>> = parallel::map(params.trees, threads, |index| {
        if cancelled() {
            return None;
        }
        let mut rng = Rng::new(mix(params.seed ^ mix(index as u64 + 1)));
        let mut counts = vec![0u32; n];
        if params.bootstrap {
            for _ in 0..n {
                counts[(rng.next_u64() % n as u64) as usize] += 1;
            }
        } else {
            counts.iter_mut().for_each(|c| *c = 1);
        }
        // Three classes padded to four lanes, for the histograms' four-wide bins.
        let lanes = if classes == 3 { 4 } else { classes };
        let mut values = vec![0f32; n * lanes];
        let mut rows = Vec::with_capacity(n);
        let mut total = vec![0f64; classes];
        for row in 0..n {
            if counts[row] > 0 {
                let w = f64::from(counts[row]) * f64::from(weights[row]);
                values[row * lanes + y[row] as usize] = w as f32;
                total[y[row] as usize] += w;
                rows.push(row as u32);
            }
        }
        let mut tree = Tree::new();
        let mut grow = Grow {
            binned,
            values: &values,
            lanes,
            criterion: Criterion::Gini { classes },
            max_depth: params.max_depth,
            min_leaf: params.min_leaf,
            sample: Some((params.max_features.count(features), &mut rng)),
            threads: Cores::Fixed(1),
            spare: Vec::new(),
            leaf_rows: Vec::new(),
            gathered: Vec::new(),
        };
        grow.grow(&mut tree, rows, total, None, 0);
        on_tree(index + 1);
        let mut importance = vec![0f64; features];
        tree.add_importance(&mut importance);
        Some((tree, importance))
    });
    let mut ensemble = Ensemble {
        kind: EnsembleKind::Forest,
        inputs: features,
        classes,
        init: Vec::new(),
        trees: Vec::with_capacity(params.trees),
        importance: vec![0.0; features],
        rounds: params.trees,
        rounds_run: params.trees,
    };
    for tree in grown {
        let (tree, importance) = tree.ok_or_else(|| "interrupted".to_owned())?;
        // scikit-learn's feature_importances_: each tree's normalised, then averaged.
        let mut importance = importance;
        normalise(&mut importance);
        for (sum, value) in ensemble.importance.iter_mut().zip(&importance) {
            *sum += value;
        }
        ensemble.trees.push(tree);
    }
    normalise(&mut ensemble.importance);
    Ok(ensemble)
}

/// Every row of a binned set, for fitting on all of it.
pub fn every_row(binned: &Binned) -> Vec<u32> {
    (0..binned.rows as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XOR of two signs (no linear model can), plus a noise feature; class 2 never appears.
    fn xor(rows: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
        let mut rng = Rng::new(seed);
        let mut x = Vec::with_capacity(rows * 3);
        let mut y = Vec::with_capacity(rows);
        for _ in 0..rows {
            let (a, b, noise) = (rng.normal(), rng.normal(), rng.normal());
            x.extend([a as f32, b as f32, noise as f32]);
            y.push(u8::from((a > 0.0) != (b > 0.0)));
        }
        (x, y)
    }

    fn accuracy(probabilities: &[f32], y: &[u8], k: usize) -> f64 {
        let right = y
            .iter()
            .enumerate()
            .filter(|(row, label)| {
                let p = &probabilities[row * k..(row + 1) * k];
                let best = (0..k).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
                best == **label as usize
            })
            .count();
        right as f64 / y.len() as f64
    }

    fn boost(x: &[f32], y: &[u8], weights: &[f32], threads: usize) -> Ensemble {
        boost_classes(x, y, weights, threads, 3)
    }

    fn boost_classes(
        x: &[f32],
        y: &[u8],
        weights: &[f32],
        threads: usize,
        classes: usize,
    ) -> Ensemble {
        let rows: Vec<usize> = (0..y.len()).collect();
        let binned = Binned::new(x, 3, &rows, &rows, threads);
        let params = BoostParams {
            iterations: 30,
            learning_rate: 0.3,
            max_depth: 3,
            min_leaf: 5.0,
            l2: 0.0,
            early_stopping: 0,
        };
        fit_boosted(
            &binned,
            y,
            weights,
            classes,
            &every_row(&binned),
            &[],
            &params,
            threads,
            &mut |_| {},
            &|| false,
        )
        .unwrap()
    }

    fn forest(x: &[f32], y: &[u8], weights: &[f32], threads: usize, bootstrap: bool) -> Ensemble {
        forest_classes(x, y, weights, threads, bootstrap, 3)
    }

    fn forest_classes(
        x: &[f32],
        y: &[u8],
        weights: &[f32],
        threads: usize,
        bootstrap: bool,
        classes: usize,
    ) -> Ensemble {
        let rows: Vec<usize> = (0..y.len()).collect();
        let binned = Binned::new(x, 3, &rows, &rows, threads);
        let params = ForestParams {
            trees: 12,
            max_depth: 6,
            min_leaf: 1.0,
            max_features: if bootstrap {
                MaxFeatures::Count(2)
            } else {
                MaxFeatures::Rule(FeatureRule::All)
            },
            bootstrap,
            seed: 7,
        };
        fit_forest(
            &binned,
            y,
            weights,
            classes,
            &params,
            threads,
            &|_| {},
            &|| false,
        )
        .unwrap()
    }

    #[test]
    fn both_learn_xor_out_of_sample_and_find_the_noise_unimportant() {
        let (x, y) = xor(4000, 1);
        let (test_x, test_y) = xor(2000, 2);
        let ones = vec![1.0; y.len()];
        for model in [boost(&x, &y, &ones, 2), forest(&x, &y, &ones, 2, true)] {
            let p = model.predict(&test_x, test_y.len());
            let right = accuracy(&p, &test_y, 3);
            assert!(right > 0.95, "{:?}: accuracy {right}", model.kind);
            assert!(
                model.importance[2] < 0.1,
                "{:?}: the noise feature's importance {:?}",
                model.kind,
                model.importance
            );
            let total: f64 = model.importance.iter().sum();
            assert!((total - 1.0).abs() < 1e-9);
            // Probabilities are distributions.
            for row in p.chunks(3) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
            }
        }
    }

    #[test]
    fn both_learn_with_two_classes_or_five() {
        // Each class count takes its own path through the histograms: two lanes a row for the
        // forest's two classes and the booster's unit weights, four for weights, the class
        // count for the forest's five.
        let (x, y) = xor(3000, 5);
        let (test_x, test_y) = xor(1500, 6);
        let ones = vec![1.0; y.len()];
        let twos = vec![2.0; y.len()];
        for classes in [2, 5] {
            for model in [
                boost_classes(&x, &y, &ones, 2, classes),
                boost_classes(&x, &y, &twos, 2, classes),
                forest_classes(&x, &y, &ones, 2, true, classes),
            ] {
                let p = model.predict(&test_x, test_y.len());
                let right = accuracy(&p, &test_y, classes);
                assert!(right > 0.95, "{classes} classes, {:?}: {right}", model.kind);
            }
        }
    }

    #[test]
    fn the_same_model_on_one_core_or_four() {
        let (x, y) = xor(3000, 3);
        let ones = vec![1.0; y.len()];
        assert_eq!(boost(&x, &y, &ones, 1), boost(&x, &y, &ones, 4));
        assert_eq!(
            forest(&x, &y, &ones, 1, true),
            forest(&x, &y, &ones, 4, true)
        );
        // Weighted rows (the four-lane statistics), and validation rows scored in the round's
        // parallel step and stopping it early.
        let weights: Vec<f32> = (0..y.len())
            .map(|row| 1.0 + (row % 3) as f32 * 0.5)
            .collect();
        let rows: Vec<usize> = (0..y.len()).collect();
        let params = BoostParams {
            iterations: 40,
            learning_rate: 0.5,
            max_depth: 4,
            min_leaf: 5.0,
            l2: 0.0,
            early_stopping: 3,
        };
        let fit = |threads: usize| {
            let binned = Binned::new(&x, 3, &rows, &rows, threads);
            let (train, valid): (Vec<u32>, Vec<u32>) =
                (0..y.len() as u32).partition(|r| r % 5 != 0);
            fit_boosted(
                &binned,
                &y,
                &weights,
                3,
                &train,
                &valid,
                &params,
                threads,
                &mut |_| {},
                &|| false,
            )
            .unwrap()
        };
        assert_eq!(fit(1), fit(4));
    }

    #[test]
    fn subtrees_grown_apart_make_the_tree_one_core_grows() {
        // Every split of at least twice `SPAWN_AT` (64 here) rows finds a free core: subtrees
        // grow apart at every depth, inside one another, and are appended in node order. The
        // tree, its gains and each leaf's rows are those grown on one core, and every core
        // taken is given back.
        let (x, _) = xor(20_000, 5);
        let rows: Vec<usize> = (0..x.len() / 3).collect();
        let binned = Binned::new(&x, 3, &rows, &rows, 1);
        let mut rng = Rng::new(8);
        let values: Vec<f32> = rows
            .iter()
            .flat_map(|_| [rng.normal() as f32, 0.25])
            .collect();
        let (gradient, hessian) = values.chunks(2).fold((0f64, 0f64), |(g, h), pair| {
            (g + f64::from(pair[0]), h + f64::from(pair[1]))
        });
        let grown = |threads: Cores| {
            let mut grow = Grow {
                binned: &binned,
                values: &values,
                lanes: 2,
                criterion: Criterion::Newton { l2: 0.0, rate: 0.1 },
                max_depth: 7,
                min_leaf: 5.0,
                sample: None,
                threads,
                spare: Vec::new(),
                leaf_rows: Vec::new(),
                gathered: Vec::new(),
            };
            let mut tree = Tree::new();
            let total = vec![gradient, hessian, rows.len() as f64];
            grow.grow(&mut tree, every_row(&binned), total, None, 0);
            let mut leaves = grow.leaf_rows;
            leaves.sort();
            (tree, leaves)
        };
        let growing = AtomicUsize::new(1);
        let alone = grown(Cores::Fixed(1));
        let apart = grown(Cores::Shared {
            cores: 64,
            growing: &growing,
        });
        assert!(
            alone.0.nodes() > 100,
            "a deep tree: {} nodes",
            alone.0.nodes()
        );
        assert_eq!(alone, apart);
        assert_eq!(
            growing.load(Ordering::Relaxed),
            1,
            "every core taken is given back"
        );
    }

    #[test]
    fn histograms_and_subtrees_split_over_threads_give_the_same_model() {
        // Nodes large enough that their features' histograms are split across threads (six
        // features: all on one thread, or two on each of three), and that a core left free by
        // the two class trees grows a left subtree apart (appended in place, its leaves'
        // scores carried into the second round).
        let (narrow, y) = xor(350_000, 8);
        let mut rng = Rng::new(9);
        let x: Vec<f32> = narrow
            .chunks(3)
            .flat_map(|row| {
                let mut wide = row.to_vec();
                wide.extend((0..3).map(|_| rng.normal() as f32));
                wide
            })
            .collect();
        let rows: Vec<usize> = (0..y.len()).collect();
        let ones = vec![1.0; y.len()];
        let params = BoostParams {
            iterations: 2,
            learning_rate: 0.3,
            max_depth: 3,
            min_leaf: 5.0,
            l2: 0.0,
            early_stopping: 0,
        };
        let fit = |threads: usize| {
            let binned = Binned::new(&x, 6, &rows, &rows, threads);
            fit_boosted(
                &binned,
                &y,
                &ones,
                2,
                &every_row(&binned),
                &[],
                &params,
                threads,
                &mut |_| {},
                &|| false,
            )
            .unwrap()
        };
        assert_eq!(fit(1), fit(3));
    }

    #[test]
    fn a_weight_of_two_is_a_duplicated_row() {
        // Features with few distinct values, so the bins are the same either way.
        let (x, y) = xor(600, 4);
        let x: Vec<f32> = x.iter().map(|v| (v * 4.0).round() / 4.0).collect();
        let weights: Vec<f32> = (0..y.len()).map(|row| 1.0 + (row % 2) as f32).collect();
        let (mut dx, mut dy) = (Vec::new(), Vec::new());
        for row in 0..y.len() {
            for _ in 0..weights[row] as usize {
                dx.extend_from_slice(&x[row * 3..(row + 1) * 3]);
                dy.push(y[row]);
            }
        }
        let ones = vec![1.0; dy.len()];
        let (weighted, duplicated) = (boost(&x, &y, &weights, 2), boost(&dx, &dy, &ones, 2));
        assert_eq!(weighted.trees.len(), duplicated.trees.len());
        let (px, pd) = (
            weighted.predict(&x, y.len()),
            duplicated.predict(&x, y.len()),
        );
        for (a, b) in px.iter().zip(&pd) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // The forest without bootstrap or feature sampling: the same trees.
        let (weighted, duplicated) = (
            forest(&x, &y, &weights, 2, false),
            forest(&dx, &dy, &ones, 2, false),
        );
        let (px, pd) = (
            weighted.predict(&x, y.len()),
            duplicated.predict(&x, y.len()),
        );
        for (a, b) in px.iter().zip(&pd) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn early_stopping_keeps_the_best_round_on_the_validation_rows() {
        // Labels of pure noise: the validation loss only worsens after the first rounds.
        let mut rng = Rng::new(5);
        let x: Vec<f32> = (0..3000).map(|_| rng.normal() as f32).collect();
        let y: Vec<u8> = (0..1000).map(|_| (rng.next_u64() % 2) as u8).collect();
        let rows: Vec<usize> = (0..1000).collect();
        let binned = Binned::new(&x, 3, &rows[..800], &rows, 1);
        let train: Vec<u32> = (0..800).collect();
        let valid: Vec<u32> = (800..1000).collect();
        let params = BoostParams {
            iterations: 200,
            learning_rate: 0.3,
            max_depth: 4,
            min_leaf: 2.0,
            l2: 0.0,
            early_stopping: 10,
        };
        let mut seen = Vec::new();
        let model = fit_boosted(
            &binned,
            &y,
            &vec![1.0; 1000],
            2,
            &train,
            &valid,
            &params,
            1,
            &mut |round| seen.push(round),
            &|| false,
        )
        .unwrap();
        assert!(model.rounds_run < 200, "it stopped: {}", model.rounds_run);
        assert_eq!(model.rounds_run, model.rounds + 10);
        assert_eq!(model.trees.len(), model.rounds * 2);
        let best = seen
            .iter()
            .map(|r| r.valid_loss.unwrap())
            .fold(f64::INFINITY, f64::min);
        assert_eq!(seen[model.rounds - 1].valid_loss.unwrap(), best);
    }

    #[test]
    fn thresholds_send_rows_where_their_codes_went() {
        let (x, y) = xor(2000, 6);
        let rows: Vec<usize> = (0..y.len()).collect();
        let binned = Binned::new(&x, 3, &rows, &rows, 1);
        let model = boost(&x, &y, &vec![1.0; y.len()], 1);
        for tree in &model.trees {
            for row in 0..y.len() {
                assert_eq!(
                    tree.leaf(&x[row * 3..row * 3 + 3]),
                    tree.leaf_of_codes(&binned, row)
                );
            }
        }
    }
}

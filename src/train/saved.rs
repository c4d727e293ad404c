//! `model.json`, read back: the features, classes, scaler and the model of any kind, checked
//! so that predicting with a damaged or foreign file fails with a reason instead of a panic.

use serde::Deserialize;

use super::Scaler;
use super::network::Network;
use super::trees::Ensemble;

/// What `model.json` holds that predicting needs (`signals` reads it; so can anyone).
#[derive(Debug, Deserialize)]
pub struct ModelFile {
    pub format_version: u32,
    pub features: Vec<String>,
    pub classes: Vec<String>,
    pub scaler: Scaler,
    /// `logistic`, `softmax` and `mlp`.
    #[serde(default)]
    pub network: Option<Network>,
    /// `gbdt` and `forest`.
    #[serde(default)]
    pub trees: Option<Ensemble>,
    pub trained_on: TrainedOn,
}

impl ModelFile {
    /// Class probabilities for `rows` standardised rows (after [`check_model`]).
    pub fn predict(&self, x: &[f32], rows: usize) -> Vec<f32> {
        match (&self.network, &self.trees) {
            (Some(network), _) => network.predict(x, rows),
            (None, Some(trees)) => trees.predict(x, rows),
            (None, None) => Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct TrainedOn {
    pub to: String,
}

/// The shapes in `model.json` agree with each other (so predicting cannot index out of bounds).
pub fn check_model(model: &ModelFile) -> Result<(), String> {
    let features = model.features.len();
    if model.scaler.mean.len() != features || model.scaler.scale.len() != features {
        return Err(format!(
            "the scaler has {} means and {} scales for {features} features",
            model.scaler.mean.len(),
            model.scaler.scale.len()
        ));
    }
    let network = match (&model.network, &model.trees) {
        (Some(network), _) => network,
        (None, Some(trees)) => return trees.check(features, model.classes.len()),
        (None, None) => return Err("it holds neither a network nor trees".to_owned()),
    };
    if network.inputs != features || network.classes != model.classes.len() {
        return Err(format!(
            "the network maps {} inputs to {} classes; the model lists {features} features and {} classes",
            network.inputs,
            network.classes,
            model.classes.len()
        ));
    }
    // The layout's size, without overflow on a damaged file's huge numbers.
    let (inputs, hidden, classes) = (network.inputs, network.hidden, network.classes);
    let fan_in = if hidden > 0 { hidden } else { inputs };
    let expected = inputs
        .checked_mul(hidden)
        .and_then(|w1| w1.checked_add(hidden))
        .and_then(|sum| sum.checked_add(fan_in.checked_mul(classes)?))
        .and_then(|sum| sum.checked_add(classes))
        .ok_or_else(|| format!("the network's sizes ({inputs}, {hidden}, {classes}) overflow"))?;
    if network.params.len() != expected {
        return Err(format!(
            "the network has {} parameters; its layout needs {expected}",
            network.params.len()
        ));
    }
    Ok(())
}

//! The trading rules as YAML params, one declaration for every stage that trades: `backtest`
//! takes them at the top of its `with`, `signals` under `portfolio:` for its paper portfolio,
//! so a pipeline can hold the backtest and the paper book to the same rules.
//!
//! ```yaml
//! exit: {stop: 0.01, target: 0.02, horizon: 4, reversal: true}
//! capital: 10000
//! risk_per_trade: 0.01
//! max_positions: 5
//! fees: {maker: 0.0005, taker: 0.00075}
//! slippage: 0.0002
//! daily_loss_limit: 0.05                                  # each portfolio rule off by default
//! correlation: {window: 168, max: 0.8, max_correlated: 2}
//! sizing: risk        # or volatility (target_volatility, volatility_window), or kelly (kelly_fraction)
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::engine::{CorrelationCap, Portfolio, Rules, Sizing};
use crate::diagnostic::location::{Anchor, YamlPath};
use crate::diagnostic::params::{ParamError, check_range, parse_params};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exit {
    #[serde(default = "default_stop")]
    pub stop: f64,
    #[serde(default = "default_target")]
    pub target: Option<f64>,
    #[serde(default = "default_horizon")]
    pub horizon: Option<usize>,
    #[serde(default = "default_true")]
    pub reversal: bool,
}

impl Default for Exit {
    fn default() -> Self {
        Self {
            stop: default_stop(),
            target: default_target(),
            horizon: default_horizon(),
            reversal: true,
        }
    }
}

/// `correlation:`: the cap on correlated positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelationParams {
    #[serde(default = "default_correlation_window")]
    pub window: usize,
    #[serde(default = "default_correlation_max")]
    pub max: f64,
    #[serde(default = "default_max_correlated")]
    pub max_correlated: usize,
}

/// `sizing:`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SizingName {
    #[default]
    Risk,
    Volatility,
    Kelly,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fees {
    #[serde(default = "default_maker")]
    pub maker: f64,
    #[serde(default = "default_taker")]
    pub taker: f64,
}

impl Default for Fees {
    fn default() -> Self {
        Self {
            maker: default_maker(),
            taker: default_taker(),
        }
    }
}

/// Every rule of a simulated account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleParams {
    #[serde(default)]
    pub exit: Exit,
    #[serde(default = "default_capital")]
    pub capital: f64,
    #[serde(default = "default_risk")]
    pub risk_per_trade: f64,
    #[serde(default = "default_max_positions")]
    pub max_positions: usize,
    #[serde(default)]
    pub fees: Fees,
    #[serde(default = "default_slippage")]
    pub slippage: f64,
    /// No new entries for the rest of the UTC day once equity is this far below the day's open.
    #[serde(default)]
    pub daily_loss_limit: Option<f64>,
    #[serde(default)]
    pub correlation: Option<CorrelationParams>,
    #[serde(default)]
    pub sizing: SizingName,
    /// `sizing: volatility`: each position's annualised volatility.
    #[serde(default = "default_target_volatility")]
    pub target_volatility: f64,
    /// `sizing: volatility`: bars of trailing returns.
    #[serde(default = "default_volatility_window")]
    pub volatility_window: usize,
    /// `sizing: kelly`: the share of the Kelly bet.
    #[serde(default = "default_kelly_fraction")]
    pub kelly_fraction: f64,
}

impl Default for RuleParams {
    fn default() -> Self {
        parse_params(&yaml_serde::Value::Mapping(Default::default()))
            .expect("every rule has a default")
    }
}

/// The label's thresholds (DOMAIN.md section 4: down 1%, up 2%, 4 bars).
fn default_stop() -> f64 {
    0.01
}
fn default_target() -> Option<f64> {
    Some(0.02)
}
fn default_horizon() -> Option<usize> {
    Some(4)
}
fn default_true() -> bool {
    true
}
fn default_maker() -> f64 {
    super::DEFAULT_MAKER_FEE
}
fn default_taker() -> f64 {
    super::DEFAULT_TAKER_FEE
}
fn default_slippage() -> f64 {
    super::DEFAULT_SLIPPAGE
}
fn default_capital() -> f64 {
    10_000.0
}
fn default_risk() -> f64 {
    0.01
}
fn default_max_positions() -> usize {
    5
}
fn default_correlation_window() -> usize {
    168
}
fn default_correlation_max() -> f64 {
    0.8
}
fn default_max_correlated() -> usize {
    2
}
fn default_target_volatility() -> f64 {
    0.5
}
fn default_volatility_window() -> usize {
    168
}
fn default_kelly_fraction() -> f64 {
    0.25
}

impl RuleParams {
    /// Every bound, with the error at the offending key under `root`.
    pub fn check(&self, root: &YamlPath) -> Result<(), ParamError> {
        let exit = root.clone().key("exit");
        check_range(
            exit.clone().key("stop"),
            self.exit.stop,
            1e-6,
            1.0,
            "the stop distance",
        )?;
        if let Some(target) = self.exit.target {
            check_range(
                exit.clone().key("target"),
                target,
                1e-6,
                100.0,
                "the target distance",
            )?;
        }
        if self.exit.horizon == Some(0) {
            return Err(ParamError::new(
                exit.key("horizon"),
                "horizon is in bars and must be at least 1 (null: no time exit)",
            ));
        }
        if !(self.capital.is_finite() && self.capital > 0.0) {
            return Err(ParamError::new(
                root.clone().key("capital"),
                "capital must be above 0",
            ));
        }
        check_range(
            root.clone().key("risk_per_trade"),
            self.risk_per_trade,
            1e-6,
            1.0,
            "risk_per_trade",
        )?;
        if !(1..=1000).contains(&self.max_positions) {
            return Err(ParamError::new(
                root.clone().key("max_positions"),
                "max_positions must be between 1 and 1000",
            ));
        }
        let fees = root.clone().key("fees");
        check_range(
            fees.clone().key("maker"),
            self.fees.maker,
            -0.01,
            0.1,
            "a fee",
        )?;
        check_range(fees.key("taker"), self.fees.taker, -0.01, 0.1, "a fee")?;
        check_range(
            root.clone().key("slippage"),
            self.slippage,
            0.0,
            0.1,
            "slippage",
        )?;
        if let Some(limit) = self.daily_loss_limit {
            check_range(
                root.clone().key("daily_loss_limit"),
                limit,
                1e-4,
                1.0,
                "the daily loss limit (a fraction of the day's opening equity)",
            )?;
        }
        if let Some(cap) = &self.correlation {
            let at = root.clone().key("correlation");
            if cap.window < 3 {
                return Err(ParamError::new(
                    at.key("window"),
                    "window is in bars and must be at least 3",
                ));
            }
            check_range(at.clone().key("max"), cap.max, -1.0, 1.0, "a correlation")?;
            if cap.max_correlated == 0 {
                return Err(ParamError::new(
                    at.key("max_correlated"),
                    "max_correlated must be at least 1",
                ));
            }
        }
        match self.sizing {
            SizingName::Risk => {}
            SizingName::Volatility => {
                check_range(
                    root.clone().key("target_volatility"),
                    self.target_volatility,
                    1e-4,
                    100.0,
                    "the annualised volatility per position",
                )?;
                if self.volatility_window < 2 {
                    return Err(ParamError::new(
                        root.clone().key("volatility_window"),
                        "volatility_window is in bars and must be at least 2",
                    ));
                }
            }
            SizingName::Kelly => {
                check_range(
                    root.clone().key("kelly_fraction"),
                    self.kelly_fraction,
                    1e-4,
                    1.0,
                    "the share of the Kelly bet",
                )?;
                if self.exit.target.is_none() {
                    return Err(ParamError::new(
                        root.clone().key("sizing"),
                        "kelly sizing needs exit.target: the bet's payoff is the target distance",
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn rules(&self) -> Rules {
        Rules {
            capital: self.capital,
            risk_per_trade: self.risk_per_trade,
            max_positions: self.max_positions,
            maker_fee: self.fees.maker,
            taker_fee: self.fees.taker,
            slippage: self.slippage,
            stop: self.exit.stop,
            target: self.exit.target,
            horizon: self.exit.horizon,
            reverse: self.exit.reversal,
            portfolio: Portfolio {
                daily_loss_limit: self.daily_loss_limit,
                correlation: self.correlation.as_ref().map(|cap| CorrelationCap {
                    window: cap.window,
                    max: cap.max,
                    max_correlated: cap.max_correlated,
                }),
                sizing: match self.sizing {
                    SizingName::Risk => Sizing::Risk,
                    SizingName::Volatility => Sizing::Volatility {
                        target: self.target_volatility,
                        window: self.volatility_window,
                    },
                    SizingName::Kelly => Sizing::Kelly {
                        fraction: self.kelly_fraction,
                    },
                },
            },
        }
    }

    /// The portfolio rules that are on, in words (`daily loss limit 5%, correlation cap 2 above
    /// 0.80 over 168 bars, risk sizing`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(limit) = self.daily_loss_limit {
            parts.push(format!("daily loss limit {:.1}%", limit * 100.0));
        }
        if let Some(cap) = &self.correlation {
            parts.push(format!(
                "at most {} positions correlated above {:.2} over {} bars",
                cap.max_correlated, cap.max, cap.window
            ));
        }
        parts.push(match self.sizing {
            SizingName::Risk => format!("{:.2}% risk per trade", self.risk_per_trade * 100.0),
            SizingName::Volatility => format!(
                "volatility sizing to {:.0}% a year over {} bars",
                self.target_volatility * 100.0,
                self.volatility_window
            ),
            SizingName::Kelly => format!("{:.2} Kelly", self.kelly_fraction),
        });
        parts.push(format!("at most {} positions", self.max_positions));
        parts.join(", ")
    }
}

/// The fields `RuleParams` reads, for splitting a flat `with` mapping.
pub const RULE_KEYS: &[&str] = &[
    "exit",
    "capital",
    "risk_per_trade",
    "max_positions",
    "fees",
    "slippage",
    "daily_loss_limit",
    "correlation",
    "sizing",
    "target_volatility",
    "volatility_window",
    "kelly_fraction",
];

/// Parses a `with` mapping holding a kind's own params beside the rules (`backtest`'s): the
/// keys in `RULE_KEYS` become the rules, the others `T`; both refuse unknown keys, and an
/// unknown key's error lists every key the kind knows.
pub fn parse_with_rules<T: DeserializeOwned>(
    params: &yaml_serde::Value,
    own_keys: &[&str],
) -> Result<(T, RuleParams), ParamError> {
    let mut own = yaml_serde::Mapping::new();
    let mut rules = yaml_serde::Mapping::new();
    if let yaml_serde::Value::Mapping(mapping) = params {
        for (key, value) in mapping {
            let name = key.as_str().unwrap_or_default();
            if RULE_KEYS.contains(&name) {
                rules.insert(key.clone(), value.clone());
            } else if own_keys.contains(&name) {
                own.insert(key.clone(), value.clone());
            } else {
                let mut known: Vec<&str> = own_keys.iter().chain(RULE_KEYS).copied().collect();
                known.sort_unstable();
                let mut error = ParamError::new(
                    YamlPath::root().key(name),
                    format!(
                        "unknown field `{name}`, expected one of {}",
                        known
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                error.anchor = Anchor::Key;
                return Err(error);
            }
        }
    } else if !matches!(params, yaml_serde::Value::Null) {
        // Not a mapping: let serde say so, at the root.
        return Err(parse_params::<T>(params).err().unwrap_or_else(|| {
            ParamError::new(YamlPath::root(), "`with` must be a mapping of params")
        }));
    }
    let own = parse_params(&yaml_serde::Value::Mapping(own))?;
    let rules = parse_params(&yaml_serde::Value::Mapping(rules))?;
    Ok((own, rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Own {
        #[serde(default)]
        interval: Option<String>,
    }

    fn yaml(text: &str) -> yaml_serde::Value {
        yaml_serde::from_str(text).unwrap()
    }

    #[test]
    fn a_flat_mapping_splits_into_the_kinds_params_and_the_rules() {
        let (own, rules): (Own, RuleParams) = parse_with_rules(
            &yaml("{interval: 4h, capital: 500, correlation: {max: 0.5}}"),
            &["interval"],
        )
        .unwrap();
        assert_eq!(own.interval.as_deref(), Some("4h"));
        assert_eq!(rules.capital, 500.0);
        assert_eq!(rules.correlation.as_ref().unwrap().max, 0.5);
        assert_eq!(rules.correlation.as_ref().unwrap().window, 168);
        assert_eq!(rules.max_positions, RuleParams::default().max_positions);
    }

    #[test]
    fn an_unknown_key_names_itself_and_every_known_key() {
        let error = parse_with_rules::<Own>(&yaml("{intervl: 4h}"), &["interval"]).unwrap_err();
        assert_eq!(error.path, YamlPath::root().key("intervl"));
        assert_eq!(error.anchor, Anchor::Key);
        assert!(error.message.contains("`interval`"), "{}", error.message);
        assert!(
            error.message.contains("`daily_loss_limit`"),
            "{}",
            error.message
        );
        // A wrong value inside a rule keeps its path.
        let error = parse_with_rules::<Own>(&yaml("{correlation: {max: high}}"), &["interval"])
            .unwrap_err();
        assert_eq!(
            error.path,
            YamlPath::root().key("correlation").key("max"),
            "{}",
            error.message
        );
    }

    #[test]
    fn bounds_are_checked_at_their_keys() {
        let rules: RuleParams =
            parse_params(&yaml("{sizing: kelly, exit: {target: null}}")).unwrap();
        let error = rules.check(&YamlPath::root().key("portfolio")).unwrap_err();
        assert_eq!(error.path, YamlPath::root().key("portfolio").key("sizing"));
        let rules: RuleParams = parse_params(&yaml("{daily_loss_limit: 2}")).unwrap();
        let error = rules.check(&YamlPath::root()).unwrap_err();
        assert_eq!(error.path, YamlPath::root().key("daily_loss_limit"));
    }
}

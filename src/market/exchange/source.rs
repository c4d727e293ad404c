//! Typed `sources:` entries. A source is declared once in the pipeline and named by stages:
//!
//! ```yaml
//! sources:
//!   aster:
//!     api: binance-futures              # Binance USD-M layout: Aster, Binance, ...
//!     base_url: https://fapi.asterdex.com
//!     path_prefix: /fapi/v1             # default
//!     # replay: {scenario: data/scenarios/demo.yaml}   # instead of base_url: in-process replay
//!     symbol_pattern: "[A-Z0-9]{1,40}"  # default; names outside it are refused
//!     timeout: 10s
//!     max_retries: 6
//!   vision:
//!     api: binance-dump                 # Binance public-dump kline CSV files
//!     path: /srv/data.binance.vision    # a directory, or url: file:///... or s3://bucket/prefix/
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::diagnostic::location::{Anchor, YamlPath};
use crate::diagnostic::params::{ParamError, contained_relative_path, parse_params};
use crate::market::replay::Scenario;

/// The symbol names a source accepts unless it states its own pattern.
pub const DEFAULT_SYMBOL_PATTERN: &str = "[A-Z0-9]{1,40}";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    BinanceFutures,
    BinanceDump,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSpec {
    api: Api,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    replay: Option<ReplaySpec>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    url: Option<String>,
    /// An S3-compatible server for an `s3://` url, in place of `AWS_ENDPOINT_URL`.
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    symbol_pattern: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    max_retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaySpec {
    scenario: String,
}

/// Where a Binance-compatible API is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Url(String),
    /// An in-process replay exchange started for the run.
    Replay {
        /// Project-relative scenario file.
        file: PathBuf,
        scenario: Arc<Scenario>,
    },
}

/// A validated source.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    pub symbol_pattern: Regex,
}

#[derive(Debug, Clone)]
pub enum SourceKind {
    Exchange {
        endpoint: Endpoint,
        path_prefix: String,
        timeout: Duration,
        max_retries: u32,
    },
    /// Binance public-dump kline files in an object store: `url` is an object-store URL
    /// (`file:///...` for a local directory, which is what `path:` becomes).
    Dump {
        url: String,
        display: String,
        /// The S3-compatible server, when the source names one.
        endpoint: Option<String>,
    },
}

impl Source {
    /// Refuses names outside the source's pattern; they never reach a path or a query.
    pub fn accepts_symbol(&self, symbol: &str) -> bool {
        self.symbol_pattern.is_match(symbol) && crate::market::lake::is_safe_component(symbol)
    }

    /// What the fingerprint of a stage using this source covers.
    pub fn describe(&self) -> serde_json::Value {
        let mut value = match &self.kind {
            SourceKind::Exchange {
                endpoint,
                path_prefix,
                timeout,
                max_retries,
            } => {
                let endpoint = match endpoint {
                    Endpoint::Url(url) => serde_json::json!({ "base_url": url }),
                    Endpoint::Replay { file, .. } => {
                        serde_json::json!({ "replay": file.to_string_lossy() })
                    }
                };
                serde_json::json!({
                    "api": "binance-futures",
                    "endpoint": endpoint,
                    "path_prefix": path_prefix,
                    "timeout_ms": timeout.as_millis() as u64,
                    "max_retries": max_retries,
                })
            }
            SourceKind::Dump { display, .. } => {
                serde_json::json!({ "api": "binance-dump", "location": display })
            }
        };
        value["name"] = self.name.clone().into();
        value["symbol_pattern"] = self.symbol_pattern.as_str().into();
        value
    }

    /// The project file a stage using this source must fingerprint (a replay scenario).
    pub fn scenario_file(&self) -> Option<&Path> {
        match &self.kind {
            SourceKind::Exchange {
                endpoint: Endpoint::Replay { file, .. },
                ..
            } => Some(file),
            _ => None,
        }
    }
}

/// One problem in a `sources:` entry, relative to `sources.<name>` (a nested one inside a
/// referenced scenario file, located in that file).
pub type SourceError = ParamError;

fn problem(path: YamlPath, message: impl Into<String>, help: &str) -> SourceError {
    SourceError {
        path,
        anchor: Anchor::Value,
        message: message.into(),
        help: (!help.is_empty()).then(|| help.to_owned()),
        nested: None,
    }
}

/// Checks one `sources.<name>` entry.
pub fn check_source(
    name: &str,
    value: &yaml_serde::Value,
    project_root: &Path,
) -> Result<Source, SourceError> {
    let root = YamlPath::root();
    if !crate::market::lake::is_safe_component(name) {
        return Err(SourceError {
            path: root,
            anchor: Anchor::Key,
            message: format!("invalid source name `{name}`"),
            help: Some("it names lake directories: use letters, digits, `_` and `-`".into()),
            nested: None,
        });
    }
    let spec: SourceSpec = parse_params(value)?;
    let pattern_text = spec
        .symbol_pattern
        .clone()
        .unwrap_or_else(|| DEFAULT_SYMBOL_PATTERN.to_owned());
    let symbol_pattern = Regex::new(&format!("^(?:{pattern_text})$")).map_err(|error| {
        problem(
            root.clone().key("symbol_pattern"),
            format!("invalid symbol pattern: {error}"),
            "a regular expression such as [A-Z0-9]{1,40}",
        )
    })?;
    let kind = match spec.api {
        Api::BinanceFutures => {
            for (field, present) in [
                ("path", spec.path.is_some()),
                ("url", spec.url.is_some()),
                ("endpoint", spec.endpoint.is_some()),
            ] {
                if present {
                    return Err(problem(
                        root.clone().key(field),
                        format!("`{field}` belongs to `api: binance-dump` sources"),
                        "a binance-futures source takes base_url or replay",
                    ));
                }
            }
            let endpoint = match (spec.base_url, spec.replay) {
                (Some(url), None) => Endpoint::Url(check_base_url(&url).map_err(|message| {
                    problem(
                        root.clone().key("base_url"),
                        message,
                        "for example https://fapi.asterdex.com",
                    )
                })?),
                (None, Some(replay)) => {
                    let at = root.clone().key("replay").key("scenario");
                    let file = contained_relative_path(&replay.scenario)
                        .map_err(|message| problem(at.clone(), message, ""))?;
                    let absolute = project_root.join(&file);
                    let text = fs_err::read_to_string(&absolute).map_err(|error| {
                        problem(
                            at.clone(),
                            format!("cannot read scenario `{}`: {error}", file.display()),
                            "scenario files live under data/scenarios/",
                        )
                    })?;
                    let scenario =
                        Scenario::parse(&absolute, &text).map_err(|diagnostic| SourceError {
                            path: at.clone(),
                            anchor: Anchor::Value,
                            message: format!("scenario `{}` is invalid", file.display()),
                            help: None,
                            nested: Some(diagnostic),
                        })?;
                    Endpoint::Replay {
                        file,
                        scenario: Arc::new(scenario),
                    }
                }
                (Some(_), Some(_)) => {
                    return Err(problem(
                        root.clone().key("replay"),
                        "give either `base_url` or `replay`, not both",
                        "",
                    ));
                }
                (None, None) => {
                    return Err(SourceError {
                        path: root.clone(),
                        anchor: Anchor::Key,
                        message: format!("source `{name}` has neither `base_url` nor `replay`"),
                        help: Some(
                            "add base_url: https://fapi.asterdex.com, or replay: {scenario: data/scenarios/demo.yaml}"
                                .into(),
                        ),
                        nested: None,
                    });
                }
            };
            let path_prefix = spec.path_prefix.unwrap_or_else(|| "/fapi/v1".to_owned());
            if !path_prefix.starts_with('/')
                || path_prefix.ends_with('/')
                || path_prefix.contains("//")
                || path_prefix.contains("..")
                || !path_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b))
            {
                return Err(problem(
                    root.clone().key("path_prefix"),
                    format!("invalid path prefix `{path_prefix}`"),
                    "it starts with `/` and does not end with one: /fapi/v1",
                ));
            }
            let timeout = match spec.timeout {
                Some(text) => crate::util::time::parse_duration(&text)
                    .map_err(|message| problem(root.clone().key("timeout"), message, ""))?,
                None => Duration::from_secs(10),
            };
            SourceKind::Exchange {
                endpoint,
                path_prefix,
                timeout,
                max_retries: spec.max_retries.unwrap_or(6),
            }
        }
        Api::BinanceDump => {
            for (field, present) in [
                ("base_url", spec.base_url.is_some()),
                ("replay", spec.replay.is_some()),
                ("path_prefix", spec.path_prefix.is_some()),
            ] {
                if present {
                    return Err(problem(
                        root.clone().key(field),
                        format!("`{field}` belongs to `api: binance-futures` sources"),
                        "a binance-dump source takes path or url",
                    ));
                }
            }
            let (url, display) = match (spec.path, spec.url) {
                (Some(path), None) => {
                    let dir = std::path::absolute(project_root.join(&path))
                        .unwrap_or_else(|_| project_root.join(&path));
                    let url = reqwest::Url::from_directory_path(&dir).map_err(|()| {
                        problem(
                            root.clone().key("path"),
                            format!("`{path}` cannot be a directory URL"),
                            "",
                        )
                    })?;
                    (url.to_string(), path)
                }
                (None, Some(url)) => {
                    let parsed = reqwest::Url::parse(&url).map_err(|error| {
                        problem(
                            root.clone().key("url"),
                            format!("invalid URL `{url}`: {error}"),
                            "",
                        )
                    })?;
                    if !matches!(parsed.scheme(), "file" | "s3" | "s3a") {
                        return Err(problem(
                            root.clone().key("url"),
                            format!("this build cannot read `{url}`"),
                            "it reads file:// and s3:// object-store URLs; use path: for a local directory",
                        ));
                    }
                    if let Some(endpoint) = &spec.endpoint
                        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
                    {
                        return Err(problem(
                            root.clone().key("endpoint"),
                            format!("endpoint `{endpoint}` is not an http:// or https:// URL"),
                            "for example http://127.0.0.1:9000 (MinIO)",
                        ));
                    }
                    crate::util::store::open_with(&url, spec.endpoint.as_deref())
                        .map_err(|error| problem(root.clone().key("url"), error, ""))?;
                    (url.clone(), url)
                }
                _ => {
                    return Err(SourceError {
                        path: root.clone(),
                        anchor: Anchor::Key,
                        message: format!("source `{name}` needs exactly one of `path` or `url`"),
                        help: Some("path: /srv/data.binance.vision".into()),
                        nested: None,
                    });
                }
            };
            SourceKind::Dump {
                url,
                display,
                endpoint: spec.endpoint,
            }
        }
    };
    Ok(Source {
        name: name.to_owned(),
        kind,
        symbol_pattern,
    })
}

fn check_base_url(url: &str) -> Result<String, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|error| format!("invalid base URL `{url}`: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("base URL `{url}` is not http(s)"));
    }
    if parsed.query().is_some() || !matches!(parsed.path(), "" | "/") {
        return Err(format!(
            "base URL `{url}` has a path or query; put the path in path_prefix"
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

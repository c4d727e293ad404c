//! The raw pipeline spec: serde structs that mirror the YAML file, unknown keys refused, no logic.
//!
//! Nothing outside `pipeline` sees these types: it turns them into a validated [`crate::engine::pipeline::Pipeline`].

use indexmap::IndexMap;
use serde::Deserialize;

/// A pipeline file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Named data sources (exchanges); stage kinds that talk to the outside world name one.
    #[serde(default)]
    pub sources: IndexMap<String, yaml_serde::Value>,
    #[serde(default)]
    pub defaults: DefaultsSpec,
    /// Pipeline-wide cache settings: the remote cache.
    #[serde(default)]
    pub cache: Option<PipelineCacheSpec>,
    pub stages: IndexMap<String, StageSpec>,
}

/// The pipeline's `cache:` block.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineCacheSpec {
    /// A remote cache shared between checkouts: `s3://bucket/prefix` or `file:///dir`.
    #[serde(default)]
    pub remote: Option<String>,
    /// The S3-compatible server's URL, in place of `AWS_ENDPOINT_URL`.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// Settings every stage gets unless it says otherwise.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSpec {
    /// Cache policy for stages without a `cache` block of their own.
    #[serde(default)]
    pub cache: Option<CacheSpec>,
    /// Default params per stage kind, merged under each stage's `with` (the stage's keys win).
    #[serde(default)]
    pub with: IndexMap<String, yaml_serde::Mapping>,
}

/// One stage as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub kind: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub needs: Vec<String>,
    #[serde(default, rename = "with")]
    pub params: Option<yaml_serde::Value>,
    #[serde(default)]
    pub cache: Option<CacheSpec>,
    /// Bump to invalidate this stage's cached outputs by hand.
    #[serde(default)]
    pub version: Option<u32>,
    /// Run once per member of these lists' product (`engine::matrix`).
    #[serde(default)]
    pub matrix: Option<yaml_serde::Value>,
}

/// A stage's cache policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Re-run once the cached output is older than this (for stages that read the outside world).
    #[serde(default)]
    pub ttl: Option<String>,
    /// Keep using the last output, even when inputs changed, until it is older than this.
    #[serde(default)]
    pub reuse_for: Option<String>,
}

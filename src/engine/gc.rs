//! `asterflow gc`: removes cache entries no recent run needs, orphaned attempt directories left by
//! killed runs, and staging leftovers. Runs under the run-root lock, so nothing is in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::engine::cache::{Cache, CacheError};
use crate::engine::fingerprint::Fingerprint;
use crate::engine::run_record::list_runs;
use crate::engine::store::Store;

/// What a collection removed (or would remove, when dry).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub entries_removed: usize,
    pub entries_kept: usize,
    pub bytes_freed: u64,
}

/// Keeps the entries referenced by the newest `keep_runs` runs and every stage's latest output.
pub async fn collect(
    store: &Store,
    run_root: &Path,
    keep_runs: usize,
    dry_run: bool,
) -> Result<GcReport, CacheError> {
    type EntryId = (String, String, String);
    let mut keep: BTreeSet<EntryId> = BTreeSet::new();
    for record in list_runs(run_root).into_iter().take(keep_runs) {
        for stage in record.stages {
            if let Some(fingerprint) = stage.fingerprint {
                keep.insert((record.pipeline.clone(), stage.id, fingerprint));
            }
        }
    }
    // cache/<pipeline>/<stage>/<fingerprint>/<attempt or manifest.json>/...
    let mut entries: BTreeMap<EntryId, Vec<(String, u64)>> = BTreeMap::new();
    for (path, size) in store.list("cache").await? {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() == 4 && parts[3] == "latest.json" {
            let cache = Cache::new(store.clone(), parts[1]);
            if let Some(latest) = cache.latest(parts[2]).await? {
                keep.insert((parts[1].to_owned(), latest.stage, latest.fingerprint.0));
            }
            continue;
        }
        if parts.len() >= 5 {
            let id = (
                parts[1].to_owned(),
                parts[2].to_owned(),
                parts[3].to_owned(),
            );
            entries.entry(id).or_default().push((path, size));
        }
    }
    let mut report = GcReport::default();
    for ((pipeline, stage, fingerprint), objects) in entries {
        let prefix = format!("cache/{pipeline}/{stage}/{fingerprint}");
        let cache = Cache::new(store.clone(), &pipeline);
        let manifest = cache
            .lookup(&stage, &Fingerprint(fingerprint.clone()))
            .await?;
        let wanted = manifest.is_some() && keep.contains(&(pipeline, stage, fingerprint));
        if !wanted {
            report.entries_removed += 1;
            report.bytes_freed += objects.iter().map(|(_, size)| size).sum::<u64>();
            if !dry_run {
                store.delete_prefix(&prefix).await?;
            }
            continue;
        }
        report.entries_kept += 1;
        // Attempt directories the manifest does not name were left by killed or replaced runs.
        let attempt = format!(
            "{prefix}/{}/",
            manifest.map(|manifest| manifest.dir).unwrap_or_default()
        );
        let records = [
            format!("{prefix}/manifest.json"),
            format!("{prefix}/pushed.json"),
        ];
        let mut orphans: BTreeSet<String> = BTreeSet::new();
        for (path, size) in &objects {
            if !path.starts_with(&attempt) && !records.contains(path) {
                report.bytes_freed += size;
                if let Some(dir) = path
                    .strip_prefix(&format!("{prefix}/"))
                    .and_then(|rest| rest.split('/').next())
                {
                    orphans.insert(format!("{prefix}/{dir}"));
                }
            }
        }
        if !dry_run {
            for orphan in orphans {
                store.delete_prefix(&orphan).await?;
            }
        }
    }
    for (_, size) in store.list("tmp").await? {
        report.bytes_freed += size;
    }
    if !dry_run {
        store.delete_prefix("tmp").await?;
    }
    Ok(report)
}

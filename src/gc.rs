//! `asterflow gc`: removes cache entries no recent run needs, orphaned attempt directories left by
//! killed runs, and staging leftovers. Runs under the run-root lock, so nothing is in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::cache::Cache;
use crate::run_record::list_runs;
use crate::store::StoreError;

/// What a collection removed (or would remove, when dry).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub entries_removed: usize,
    pub entries_kept: usize,
    pub bytes_freed: u64,
}

/// Keeps the entries referenced by the newest `keep_runs` runs and every stage's latest output.
pub async fn collect(
    cache: &Cache,
    run_root: &Path,
    keep_runs: usize,
    dry_run: bool,
) -> Result<GcReport, StoreError> {
    let store = cache.store();
    let mut keep: BTreeSet<(String, String)> = BTreeSet::new();
    for record in list_runs(run_root).into_iter().take(keep_runs) {
        for stage in record.stages {
            if let Some(fingerprint) = stage.fingerprint {
                keep.insert((stage.id, fingerprint));
            }
        }
    }
    // cache/<stage>/<fingerprint>/<attempt or manifest.json>/...
    let mut entries: BTreeMap<(String, String), Vec<(String, u64)>> = BTreeMap::new();
    for (path, size) in store.list("cache").await? {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() == 3 && parts[2] == "latest.json" {
            if let Some(latest) = cache.latest(parts[1]).await.ok().flatten() {
                keep.insert((latest.stage, latest.fingerprint.0));
            }
            continue;
        }
        if parts.len() >= 4 {
            entries
                .entry((parts[1].to_owned(), parts[2].to_owned()))
                .or_default()
                .push((path, size));
        }
    }
    let mut report = GcReport::default();
    for ((stage, fingerprint), objects) in entries {
        let prefix = format!("cache/{stage}/{fingerprint}");
        let manifest = cache
            .lookup(
                &stage,
                &crate::fingerprint::Fingerprint(fingerprint.clone()),
            )
            .await
            .ok()
            .flatten();
        let wanted = manifest.is_some() && keep.contains(&(stage.clone(), fingerprint.clone()));
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
        let manifest_path = format!("{prefix}/manifest.json");
        let mut orphans: BTreeSet<String> = BTreeSet::new();
        for (path, size) in &objects {
            if !path.starts_with(&attempt) && *path != manifest_path {
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

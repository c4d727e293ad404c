//! `asterflow gc`: drops cache entries no recent run needs.

use crate::engine::error::Error;
use crate::engine::exit_code;
use crate::engine::runner::Paths;

pub async fn gc(paths: &Paths, keep: usize, dry_run: bool, quiet: bool) -> Result<i32, Error> {
    if !paths.run_root.is_dir() {
        println!(
            "nothing to collect: {} does not exist",
            paths.run_root.display()
        );
        return Ok(exit_code::OK);
    }
    let _lock = crate::engine::lock::acquire(&paths.run_root, false, |_| {})?;
    let store = crate::engine::store::Store::open(&paths.run_root)?;
    let report = crate::engine::gc::collect(&store, &paths.run_root, keep, dry_run).await?;
    if !quiet {
        let verb = if dry_run { "would remove" } else { "removed" };
        println!(
            "{verb} {} cache entries and leftovers ({:.1} MiB); kept {} entries",
            report.entries_removed,
            report.bytes_freed as f64 / (1024.0 * 1024.0),
            report.entries_kept
        );
    }
    Ok(exit_code::OK)
}

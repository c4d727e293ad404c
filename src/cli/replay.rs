//! `asterflow replay-exchange`: a scenario served on 127.0.0.1 until Ctrl-C.

use crate::engine::error::Error;
use crate::engine::exit_code;

pub async fn replay_exchange(file: &std::path::Path, port: u16) -> Result<i32, Error> {
    let text = fs_err::read_to_string(file)?;
    let scenario = crate::market::replay::Scenario::parse(file, &text)
        .map_err(|diagnostic| Error::Usage(diagnostic.to_string()))?;
    let prefixes = scenario.path_prefixes.join(", ");
    let exchange = crate::market::replay::ReplayExchange::start(
        std::sync::Arc::new(scenario),
        ([127, 0, 0, 1], port).into(),
    )
    .await
    .map_err(Error::Usage)?;
    let limit = exchange.declared_limit();
    println!(
        "replay exchange at {} (paths {prefixes}): {} symbols, {} data, weight limit {} per {} {}",
        exchange.url,
        exchange.market().symbols().len(),
        exchange.provenance(),
        limit.limit,
        limit.interval_num,
        limit.interval.to_lowercase()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
    let stats = exchange.stats();
    eprintln!(
        "served {} requests ({} weight), {} x 429, {} x 418",
        stats.requests, stats.weight, stats.rate_limited, stats.banned
    );
    Ok(exit_code::OK)
}

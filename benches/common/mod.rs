//! Shared by the benchmarks: a lake of simulated hourly candles, written as a collection
//! writes it (one part per symbol), with the `lake.json` fixture a `command` stage hands on.

use std::path::Path;

use asterflow::market::lake::{LakeListing, Provenance};
use asterflow::market::model::Interval;
use asterflow::market::replay::{Market, Scenario};

/// The end of the benchmark data: 2026-01-01, a fixed past instant.
pub const END_MS: u64 = 1_767_225_600_000;

/// Writes two years of hourly candles for every symbol of `scenario_yaml` under `root/data`,
/// and `root/fixtures/lake.json` listing them. Returns the number of candles.
pub fn simulated_lake(root: &Path, scenario_yaml: &str) -> usize {
    let data = root.join("data");
    let scenario = Scenario::parse(Path::new("bench.yaml"), scenario_yaml).unwrap();
    let market = Market::build(&scenario).unwrap();
    let hour = Interval::parse("1h").unwrap();
    let start = END_MS - 2 * 365 * 86_400_000;
    let mut parts = Vec::new();
    let mut total = 0;
    for symbol in market.symbols() {
        let mut rows = Vec::new();
        let mut cursor = start;
        while cursor < END_MS {
            let page = market
                .klines(
                    &symbol.symbol,
                    hour,
                    Some(cursor),
                    Some(END_MS - 1),
                    1500,
                    END_MS,
                )
                .unwrap();
            let Some(last) = page.last() else { break };
            cursor = last.open_time as u64 + hour.millis();
            rows.extend(page);
        }
        total += rows.len();
        let dir =
            asterflow::market::lake::partition_dir(&data, "sim", hour, &symbol.symbol).unwrap();
        let provenance = Provenance {
            source: "sim".into(),
            base_url: "bench".into(),
            fetched_at_ms: END_MS as i64,
            kind: "simulated".into(),
        };
        asterflow::market::lake::write_part(&dir, &symbol.symbol, hour, &rows, &provenance)
            .unwrap();
        parts.extend(
            asterflow::market::lake::describe_partition(&data, "sim", hour, &symbol.symbol)
                .unwrap(),
        );
    }
    std::fs::create_dir_all(root.join("fixtures")).unwrap();
    std::fs::write(
        root.join("fixtures/lake.json"),
        serde_json::to_string(&LakeListing::new(parts)).unwrap(),
    )
    .unwrap();
    total
}

//! Binance public-dump files (`data.binance.vision`): kline files `SYMBOL-INTERVAL-DATE.csv`, the
//! same 12 columns as `GET /klines`, with a header row in recent files and none in older ones, and
//! microsecond timestamps in some (detected by magnitude); mark, index and premium kline files
//! in the same layout, told apart by the directory they are in (`markPriceKlines/`,
//! `indexPriceKlines/`, `premiumIndexKlines/`, as in the dump's own tree); and monthly funding
//! files `SYMBOL-fundingRate-DATE.csv` (`calc_time, funding_interval_hours, last_funding_rate`).
//! Also reads lake-format Parquet kline files. Files are found in a local directory, or in any
//! object store this build reads (by URL).

use std::path::{Path, PathBuf};

use crate::market::model::{Dataset, Funding, Interval, Kline};

/// A dump file whose name and directory say what it holds.
#[derive(Debug, Clone)]
pub struct KlineFile {
    pub path: PathBuf,
    pub symbol: String,
    pub dataset: Dataset,
    /// `None` for funding.
    pub interval: Option<Interval>,
}

/// Timestamps at or above this are microseconds (year 5138 in ms; 1973 in us).
const MICROSECONDS_FROM: i64 = 100_000_000_000_000;

/// `BTCUSDT-1h-2024-01-02.csv` -> (`BTCUSDT`, 1h). Names that do not fit are ignored.
pub fn parse_file_name(name: &str) -> Option<(String, Interval)> {
    let stem = name
        .strip_suffix(".csv")
        .or_else(|| name.strip_suffix(".parquet"))?;
    let mut parts = stem.splitn(3, '-');
    let symbol = parts.next()?;
    let interval = Interval::parse(parts.next()?).ok()?;
    Some((symbol.to_owned(), interval))
}

/// What a dump file holds, from its name and the directories above it: `(symbol, dataset,
/// interval)`; `None` for anything else.
pub fn classify<'a>(
    directories: impl IntoIterator<Item = &'a str>,
    name: &str,
) -> Option<(String, Dataset, Option<Interval>)> {
    if let Some(stem) = name.strip_suffix(".csv")
        && let Some((symbol, rest)) = stem.split_once('-')
        && rest.starts_with("fundingRate")
    {
        return Some((symbol.to_owned(), Dataset::Funding, None));
    }
    let (symbol, interval) = parse_file_name(name)?;
    let dataset = directories
        .into_iter()
        .find_map(|directory| match directory {
            "markPriceKlines" => Some(Dataset::MarkKlines),
            "indexPriceKlines" => Some(Dataset::IndexKlines),
            "premiumIndexKlines" => Some(Dataset::PremiumKlines),
            _ => None,
        })
        .unwrap_or(Dataset::Klines);
    Some((symbol, dataset, Some(interval)))
}

/// Every kline file under `dir` (recursively), sorted by path.
pub fn find_kline_files(dir: &Path) -> Result<Vec<KlineFile>, String> {
    let mut files = Vec::new();
    let root = dir.to_owned();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
            let path = entry.path();
            let file_type = entry
                .file_type()
                .map_err(|error| format!("cannot stat {}: {error}", path.display()))?;
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_file()
                && let Some((symbol, dataset, interval)) = path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .and_then(|name| {
                        let relative = path.strip_prefix(&root).unwrap_or(&path);
                        let directories = relative
                            .parent()
                            .into_iter()
                            .flat_map(|parent| parent.iter())
                            .filter_map(|part| part.to_str());
                        classify(directories, name)
                    })
            {
                files.push(KlineFile {
                    path,
                    symbol,
                    dataset,
                    interval,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// A dump file in an object store.
#[derive(Debug, Clone)]
pub struct KlineObject {
    pub location: object_store::path::Path,
    pub symbol: String,
    pub dataset: Dataset,
    pub interval: Option<Interval>,
}

/// Every dump file under an object-store URL (`file:///srv/dumps/`, `s3://bucket/dumps/`),
/// sorted by location.
pub async fn list_kline_objects(
    url: &str,
    endpoint: Option<&str>,
) -> Result<
    (
        std::sync::Arc<dyn object_store::ObjectStore>,
        Vec<KlineObject>,
    ),
    String,
> {
    use futures::TryStreamExt;
    let (store, prefix) = crate::util::store::open_with(url, endpoint)?;
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|error| format!("cannot list `{url}`: {error}"))?;
    let mut objects: Vec<KlineObject> = listed
        .into_iter()
        .filter_map(|meta| {
            let parts: Vec<String> = meta
                .location
                .parts()
                .map(|part| part.as_ref().to_owned())
                .collect();
            let (name, directories) = parts.split_last()?;
            let (symbol, dataset, interval) =
                classify(directories.iter().map(String::as_str), name)?;
            Some(KlineObject {
                location: meta.location,
                symbol,
                dataset,
                interval,
            })
        })
        .collect();
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    Ok((store, objects))
}

/// Reads one kline object: dump CSV or lake-format Parquet.
pub async fn read_kline_object(
    store: &dyn object_store::ObjectStore,
    location: &object_store::path::Path,
) -> Result<Vec<Kline>, String> {
    let bytes = object_bytes(store, location).await?;
    if location.extension() == Some("parquet") {
        let label = Path::new(location.as_ref());
        return crate::market::lake::read_part_bytes(label, bytes)
            .map_err(|error| error.to_string());
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{location}: not UTF-8 text"))?;
    parse_kline_csv(text).map_err(|error| format!("{location}:{error}"))
}

/// Reads one funding object: a dump `fundingRate` CSV.
pub async fn read_funding_object(
    store: &dyn object_store::ObjectStore,
    location: &object_store::path::Path,
) -> Result<Vec<Funding>, String> {
    let bytes = object_bytes(store, location).await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{location}: not UTF-8 text"))?;
    parse_funding_csv(text).map_err(|error| format!("{location}:{error}"))
}

/// The whole of one object, errors naming it.
async fn object_bytes(
    store: &dyn object_store::ObjectStore,
    location: &object_store::path::Path,
) -> Result<bytes::Bytes, String> {
    use object_store::ObjectStoreExt;
    store
        .get(location)
        .await
        .map_err(|error| format!("{location}: {error}"))?
        .bytes()
        .await
        .map_err(|error| format!("{location}: {error}"))
}

/// Reads a `fundingRate` CSV file.
pub fn read_funding_file(path: &Path) -> Result<Vec<Funding>, String> {
    let text = fs_err::read_to_string(path).map_err(|error| error.to_string())?;
    parse_funding_csv(&text).map_err(|error| format!("{}:{error}", path.display()))
}

/// The fields of each non-empty line of a dump CSV with its 0-based line number, the header row
/// of recent files (a first line that does not start with a number) left out.
fn csv_rows(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(number, line)| {
        let line = line.trim();
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let header = number == 0 && fields.first().is_some_and(|f| f.parse::<f64>().is_err());
        (!line.is_empty() && !header).then_some((number, fields))
    })
}

/// Parses a dump `fundingRate` CSV (`calc_time,funding_interval_hours,last_funding_rate`, a
/// header row optional); errors name the line.
pub fn parse_funding_csv(text: &str) -> Result<Vec<Funding>, String> {
    let mut rows = Vec::new();
    for (number, fields) in csv_rows(text) {
        if fields.len() < 3 {
            return Err(format!(
                "{}: expected 3 columns (calc_time, funding_interval_hours, last_funding_rate), found {}",
                number + 1,
                fields.len()
            ));
        }
        let bad = |index: usize| {
            format!(
                "{}: column {} `{}` is not a number",
                number + 1,
                index + 1,
                fields[index]
            )
        };
        let mut time: i64 = fields[0].parse().map_err(|_| bad(0))?;
        if time >= MICROSECONDS_FROM {
            time /= 1000;
        }
        rows.push(Funding {
            funding_time: time,
            interval_hours: fields[1].parse().map_err(|_| bad(1))?,
            funding_rate: fields[2].parse().map_err(|_| bad(2))?,
            rate_cap: None,
            rate_floor: None,
        });
    }
    Ok(rows)
}

/// Reads a `.csv` dump file or a lake-format `.parquet` file.
pub fn read_kline_file(path: &Path) -> Result<Vec<Kline>, String> {
    if path.extension().is_some_and(|ext| ext == "parquet") {
        return crate::market::lake::read_part(path).map_err(|error| error.to_string());
    }
    let text = fs_err::read_to_string(path).map_err(|error| error.to_string())?;
    parse_kline_csv(&text).map_err(|error| format!("{}:{error}", path.display()))
}

/// Parses dump CSV text; errors name the line (`12: ...`).
pub fn parse_kline_csv(text: &str) -> Result<Vec<Kline>, String> {
    let mut rows = Vec::new();
    for (number, fields) in csv_rows(text) {
        if fields.len() < 11 {
            return Err(format!(
                "{}: expected 12 columns, found {}",
                number + 1,
                fields.len()
            ));
        }
        let int = |index: usize| -> Result<i64, String> {
            fields[index]
                .parse::<i64>()
                .or_else(|_| fields[index].parse::<f64>().map(|v| v as i64))
                .map_err(|_| {
                    format!(
                        "{}: column {} `{}` is not an integer",
                        number + 1,
                        index + 1,
                        fields[index]
                    )
                })
        };
        let float = |index: usize| -> Result<f64, String> {
            fields[index].parse::<f64>().map_err(|_| {
                format!(
                    "{}: column {} `{}` is not a number",
                    number + 1,
                    index + 1,
                    fields[index]
                )
            })
        };
        let mut open_time = int(0)?;
        let mut close_time = int(6)?;
        if open_time >= MICROSECONDS_FROM {
            open_time /= 1000;
            close_time /= 1000;
        }
        rows.push(Kline {
            open_time,
            open: float(1)?,
            high: float(2)?,
            low: float(3)?,
            close: float(4)?,
            volume: float(5)?,
            close_time,
            quote_volume: float(7)?,
            trades: int(8)?,
            taker_buy_base: float(9)?,
            taker_buy_quote: float(10)?,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_headers_and_microseconds() {
        let with_header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n\
            1704067200000,1,2,0.5,1.5,10,1704070799999,15,3,4,6,0\n";
        let rows = parse_kline_csv(with_header).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].close_time, 1_704_070_799_999);
        let micros = "1704067200000000,1,2,0.5,1.5,10,1704070799999999,15,3,4,6,0\n";
        let rows = parse_kline_csv(micros).unwrap();
        assert_eq!(rows[0].open_time, 1_704_067_200_000);
        assert_eq!(rows[0].close_time, 1_704_070_799_999);
        let error = parse_kline_csv("1,2,3\n").unwrap_err();
        assert!(error.starts_with("1: expected 12 columns"), "{error}");
    }

    #[test]
    fn file_names() {
        let (symbol, interval) = parse_file_name("BTCUSDT-1h-2024-01.csv").unwrap();
        assert_eq!((symbol.as_str(), interval.name()), ("BTCUSDT", "1h"));
        assert!(parse_file_name("BTCUSDT-1h-2024-01.zip").is_none());
        assert!(parse_file_name("notes.csv").is_none());
        let (symbol, dataset, interval) = classify(
            [
                "futures",
                "um",
                "monthly",
                "markPriceKlines",
                "BTCUSDT",
                "1h",
            ],
            "BTCUSDT-1h-2024-01.csv",
        )
        .unwrap();
        assert_eq!(
            (symbol.as_str(), dataset, interval.map(Interval::name)),
            ("BTCUSDT", Dataset::MarkKlines, Some("1h"))
        );
        let (symbol, dataset, interval) = classify(
            ["fundingRate", "ETHUSDT"],
            "ETHUSDT-fundingRate-2024-01.csv",
        )
        .unwrap();
        assert_eq!(
            (symbol.as_str(), dataset, interval),
            ("ETHUSDT", Dataset::Funding, None)
        );
        assert_eq!(
            classify([], "BTCUSDT-4h-2024-01.csv").unwrap().1,
            Dataset::Klines
        );
    }

    #[test]
    fn funding_csv() {
        let text = "calc_time,funding_interval_hours,last_funding_rate\n1704067200003,8,0.00010000\n1704096000000,8,-0.00002500\n";
        let rows = parse_funding_csv(text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].funding_time, 1_704_067_200_003);
        assert_eq!(rows[0].interval_hours, 8);
        assert_eq!(rows[1].funding_rate, -0.000025);
        let error = parse_funding_csv("1704067200000,8,x\n").unwrap_err();
        assert!(error.starts_with("1: column 3 `x`"), "{error}");
    }
}

//! Funding series: settlements on the symbol's schedule (a few milliseconds late is normal),
//! none missing, every rate inside its cap and floor.

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};

/// The columns a funding part must have.
pub const COLUMNS: [(&str, DataType); 6] = [
    ("funding_time", DataType::Int64),
    ("funding_rate", DataType::Float64),
    ("funding_interval_hours", DataType::Int64),
    ("rate_cap", DataType::Float64),
    ("rate_floor", DataType::Float64),
    ("provenance", DataType::Utf8),
];

/// How long after the hour a settlement may be stamped and still be on schedule: real ones run
/// a few milliseconds late; a minute is far beyond that and far short of any interval.
pub const MAX_DELAY_MS: i64 = 60_000;

const HOUR_MS: i64 = 3_600_000;

/// What a funding series holds beyond the figures every dataset has.
#[derive(Debug, Default, Clone)]
pub struct FundingFigures {
    /// Settlements not on an hour of the symbol's schedule (or more than a minute after one).
    pub off_schedule: u64,
    pub first_off_schedule: Option<i64>,
    /// The largest delay after the hour among those on schedule, ms.
    pub largest_delay_ms: i64,
    /// Settlements the schedule expected between the first and the last that are not there.
    pub missing: u64,
    /// Where the first run of missing settlements starts (the settlement before it).
    pub first_gap: Option<i64>,
    /// Rates outside their cap and floor (the stored ones, else +-`funding_cap`).
    pub out_of_bounds: u64,
    pub first_out_of_bounds: Option<(i64, f64)>,
    /// Rates that are missing or not finite.
    pub bad_values: u64,
}

/// One settlement as stored.
#[derive(Debug, Clone, Copy)]
pub struct Settlement {
    pub time: i64,
    pub rate: f64,
    pub interval_hours: i64,
    pub cap: Option<f64>,
    pub floor: Option<f64>,
}

/// Reads the settlements of a batch in the funding layout; rows with a missing time or rate
/// are counted, not returned.
pub fn settlements(batch: &RecordBatch, bad_values: &mut u64) -> Vec<Settlement> {
    let int = |name: &str| super::measure::column::<Int64Type>(batch, name);
    let float = |name: &str| super::measure::column::<Float64Type>(batch, name);
    let (Some(times), Some(rates), Some(hours), Some(caps), Some(floors)) = (
        int("funding_time"),
        float("funding_rate"),
        int("funding_interval_hours"),
        float("rate_cap"),
        float("rate_floor"),
    ) else {
        return Vec::new();
    };
    let optional =
        |array: &arrow::array::Float64Array, i: usize| (!array.is_null(i)).then(|| array.value(i));
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        if times.is_null(i) || rates.is_null(i) || !rates.value(i).is_finite() {
            *bad_values += 1;
            continue;
        }
        out.push(Settlement {
            time: times.value(i),
            rate: rates.value(i),
            interval_hours: if hours.is_null(i) { 0 } else { hours.value(i) },
            cap: optional(caps, i),
            floor: optional(floors, i),
        });
    }
    out
}

/// The interval in force at each settlement, in hours: the one recorded with it, unless the
/// spacing to the settlement before and to the one after is the same whole interval (1, 2, 4
/// or 8 hours): a schedule that held for a while, such as the 8 hours of a symbol's history
/// before it moved to the 4 hours `fundingInfo` states today. A single missing settlement
/// leaves unequal spacings on its two sides, so it is still found.
fn intervals_in_force(series: &[Settlement]) -> Vec<i64> {
    let hour = |s: &Settlement| s.time.div_euclid(HOUR_MS);
    (0..series.len())
        .map(|i| {
            let recorded = series[i].interval_hours.max(1);
            if i == 0 || i + 1 == series.len() {
                return recorded;
            }
            let before = hour(&series[i]) - hour(&series[i - 1]);
            let after = hour(&series[i + 1]) - hour(&series[i]);
            if before == after && [1, 2, 4, 8].contains(&before) {
                before
            } else {
                recorded
            }
        })
        .collect()
}

/// Measures a series sorted by time (duplicates already counted and removed by the caller).
/// `default_cap` bounds rates whose rows record no cap or floor.
pub fn measure(series: &[Settlement], default_cap: f64) -> FundingFigures {
    let mut figures = FundingFigures::default();
    let in_force = intervals_in_force(series);
    // The hour, the time and the interval of the previous settlement on schedule.
    let mut previous: Option<(i64, i64, i64)> = None;
    for (settlement, &hours) in series.iter().zip(&in_force) {
        let hour = settlement.time.div_euclid(HOUR_MS) * HOUR_MS;
        let delay = settlement.time - hour;
        let every = hours * HOUR_MS;
        if delay > MAX_DELAY_MS || hour.rem_euclid(every) != 0 {
            figures.off_schedule += 1;
            figures.first_off_schedule.get_or_insert(settlement.time);
        } else {
            figures.largest_delay_ms = figures.largest_delay_ms.max(delay);
            if let Some((previous_hour, previous_time, previous_hours)) = previous {
                // Across a change of schedule, the longer interval of the two.
                let step = every.max(previous_hours * HOUR_MS);
                let skipped = ((hour - previous_hour) / step - 1).max(0) as u64;
                if skipped > 0 {
                    figures.missing += skipped;
                    figures.first_gap.get_or_insert(previous_time);
                }
            }
            previous = Some((hour, settlement.time, hours));
        }
        let cap = settlement.cap.unwrap_or(default_cap);
        let floor = settlement.floor.unwrap_or(-default_cap);
        // The stored bounds are exact decimals; a rate at the cap is inside it.
        let slack = 1e-12;
        if settlement.rate > cap + slack || settlement.rate < floor - slack {
            figures.out_of_bounds += 1;
            figures
                .first_out_of_bounds
                .get_or_insert((settlement.time, settlement.rate));
        }
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: i64, late_ms: i64, rate: f64) -> Settlement {
        Settlement {
            time: 1_704_067_200_000 + hours * HOUR_MS + late_ms,
            rate,
            interval_hours: 8,
            cap: Some(0.02),
            floor: Some(-0.02),
        }
    }

    #[test]
    fn late_milliseconds_pass_gaps_and_out_of_cap_rates_do_not() {
        let clean: Vec<Settlement> = (0..30).map(|k| at(8 * k, k % 7, 0.0001)).collect();
        let figures = measure(&clean, 0.03);
        assert_eq!(
            (figures.off_schedule, figures.missing, figures.out_of_bounds),
            (0, 0, 0)
        );
        assert_eq!(figures.largest_delay_ms, 6);
        let mut gap = clean.clone();
        gap.remove(10);
        gap.remove(10);
        let figures = measure(&gap, 0.03);
        assert_eq!(figures.missing, 2);
        assert_eq!(figures.first_gap, Some(clean[9].time));
        let mut capped = clean.clone();
        capped[4].rate = 0.0201;
        assert_eq!(measure(&capped, 0.03).out_of_bounds, 1);
        // Off the 8-hour schedule, or stamped minutes after the hour.
        let mut off = clean.clone();
        off[3] = at(8 * 3 + 1, 0, 0.0001);
        off[5] = at(8 * 5, 120_000, 0.0001);
        assert_eq!(measure(&off, 0.03).off_schedule, 2);
    }

    #[test]
    fn an_older_longer_schedule_is_not_a_gap_but_a_missing_settlement_is() {
        // Twenty settlements 8 hours apart, then twenty 4 hours apart, all recorded with
        // today's 4-hour interval (as fundingInfo states it when they are collected).
        let mut series: Vec<Settlement> = (0..20).map(|k| at(8 * k, 3, 0.0001)).collect();
        series.extend((1..=20).map(|k| at(8 * 19 + 4 * k, 3, 0.0001)));
        for settlement in &mut series {
            settlement.interval_hours = 4;
        }
        let figures = measure(&series, 0.03);
        assert_eq!((figures.missing, figures.off_schedule), (0, 0));
        // One settlement missing in the 4-hour stretch: found.
        series.remove(30);
        assert_eq!(measure(&series, 0.03).missing, 1);
    }
}

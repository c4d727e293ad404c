//! Searching sorted runs.

/// The first index in `start..end` for which `past` holds (`end` if none), where `past` holds
/// for every index after one where it does. Steps ahead by doubling distances from `start`,
/// then halves the last step: finding a run of `n` costs about `2 log2 n` calls, however long
/// the range.
pub fn run_end(start: usize, end: usize, past: impl Fn(usize) -> bool) -> usize {
    // `low` is known not past (or is `start`, not yet asked); find a `high` that is.
    let (mut low, mut step) = (start, 1);
    if start < end && past(start) {
        return start;
    }
    let mut high = loop {
        let probe = low.saturating_add(step);
        if probe >= end {
            break end;
        }
        if past(probe) {
            break probe;
        }
        low = probe;
        step *= 2;
    };
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if past(middle) {
            high = middle;
        } else {
            low = middle;
        }
    }
    high
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_end_finds_the_first_index_past_a_run() {
        for length in 0..300 {
            for start in [0, 1, 7] {
                for end in [start, start + length, start + length + 1, start + 1000] {
                    let boundary = start + length;
                    let asked = std::cell::Cell::new(0);
                    let found = run_end(start, end, |i| {
                        asked.set(asked.get() + 1);
                        assert!((start..end).contains(&i), "{i} outside {start}..{end}");
                        i >= boundary
                    });
                    assert_eq!(
                        found,
                        boundary.min(end),
                        "start {start}, length {length}, end {end}"
                    );
                    let bound = 2 * (usize::BITS - length.leading_zeros()) as usize + 2;
                    assert!(
                        asked.get() <= bound,
                        "{} calls for a run of {length}",
                        asked.get()
                    );
                }
            }
        }
    }
}

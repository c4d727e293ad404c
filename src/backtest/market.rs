//! Prices on a regular bar grid: one row per bar time, one column per symbol, `NaN` where a
//! symbol has no bar. Dense arrays keep the simulation's hot loop free of lookups.

/// OHLC prices of every symbol on every bar of a regular grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Market {
    pub symbols: Vec<String>,
    /// Bar open times, `first + k * bar_ms`.
    pub times: Vec<i64>,
    pub bar_ms: i64,
    /// Row-major: `cell = bar * symbols.len() + symbol`.
    pub open: Vec<f64>,
    pub high: Vec<f64>,
    pub low: Vec<f64>,
    pub close: Vec<f64>,
}

impl Market {
    /// An empty grid from `first` to `last` (inclusive, both bar open times) for `symbols`.
    pub fn new(symbols: Vec<String>, first: i64, last: i64, bar_ms: i64) -> Result<Self, String> {
        if bar_ms <= 0 {
            return Err(format!("the bar length must be positive, not {bar_ms} ms"));
        }
        if last < first {
            return Err("the grid ends before it starts".into());
        }
        let bars = ((last - first) / bar_ms + 1) as usize;
        let cells = bars
            .checked_mul(symbols.len())
            .filter(|&cells| cells <= 1 << 31)
            .ok_or_else(|| {
                format!(
                    "{bars} bars x {} symbols is too large a grid",
                    symbols.len()
                )
            })?;
        Ok(Self {
            times: (0..bars as i64).map(|k| first + k * bar_ms).collect(),
            symbols,
            bar_ms,
            open: vec![f64::NAN; cells],
            high: vec![f64::NAN; cells],
            low: vec![f64::NAN; cells],
            close: vec![f64::NAN; cells],
        })
    }

    pub fn cells(&self) -> usize {
        self.open.len()
    }

    /// The cell of `symbol` at the bar opening at `time`, if `time` is on the grid.
    pub fn cell_at(&self, symbol: usize, time: i64) -> Option<usize> {
        let first = *self.times.first()?;
        let offset = time - first;
        if offset < 0 || offset % self.bar_ms != 0 {
            return None;
        }
        let bar = (offset / self.bar_ms) as usize;
        (bar < self.times.len() && symbol < self.symbols.len())
            .then(|| bar * self.symbols.len() + symbol)
    }

    /// Stores one bar; false when its time is off the grid.
    pub fn set(&mut self, symbol: usize, time: i64, ohlc: [f64; 4]) -> bool {
        match self.cell_at(symbol, time) {
            Some(cell) => {
                self.open[cell] = ohlc[0];
                self.high[cell] = ohlc[1];
                self.low[cell] = ohlc[2];
                self.close[cell] = ohlc[3];
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_row_major_and_off_grid_times_are_refused() {
        let mut market = Market::new(vec!["A".into(), "B".into()], 1000, 4000, 1000).unwrap();
        assert_eq!(market.times, vec![1000, 2000, 3000, 4000]);
        assert_eq!(market.cell_at(1, 3000), Some(5));
        assert_eq!(market.cell_at(0, 3500), None);
        assert_eq!(market.cell_at(0, 5000), None);
        assert!(market.set(1, 2000, [1.0, 2.0, 0.5, 1.5]));
        assert_eq!(market.close[3], 1.5);
        assert!(market.open[2].is_nan());
    }
}

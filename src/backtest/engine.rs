//! The simulation: one pass over a regular bar grid across every symbol, filling signals at the
//! next bar's open, with fees, slippage, funding, stops and targets, risk sizing and a cap on
//! concurrent positions.
//!
//! Timing, per bar `i` of the grid:
//! 1. At the open: exits decided at the previous close (horizon, reversal) fill, then entries
//!    decided at the previous close, sized from the equity at that close. Market orders: the
//!    open plus slippage against the trade, taker fee.
//! 2. Funding events in `[open_i, open_i + bar)` are charged to positions held through the open
//!    (entered at an earlier bar and not leaving at this open), at the open (the last close when
//!    the bar is missing); a long pays a positive rate. Funding times fall on bar opens for 1h
//!    and 4h bars; with 1d bars the 08:00 and 16:00 events are charged at the day's open, to the
//!    positions held through it, an approximation the README states.
//! 3. Intrabar: a stop (stop-market: slippage, taker fee) or a target (resting limit: its price,
//!    maker fee). A bar that opens beyond either fills at the open. A bar that touches both takes
//!    the stop: the order of highs and lows inside a bar is unknown, so assume the adverse one.
//! 4. At the close: mark to market, then decide: horizon exits (held `horizon` bars), reversals,
//!    and entries from this bar's signals, strongest first, up to `max_positions`, through the
//!    portfolio rules (each off by default), in this order: the daily loss limit (no new entries
//!    for the rest of the UTC day once equity at a close is that far below the day's opening
//!    equity, the equity at its first close), the correlation cap (an entry is skipped when
//!    `max_correlated` open or ordered positions already have a trailing return correlation with
//!    it above `max`), and the sizing (`risk`: the stop loses `risk_per_trade` of equity;
//!    `volatility`: the notional that gives the position a target annualised volatility from the
//!    symbol's trailing realised volatility; `kelly`: a fraction of the Kelly bet the class
//!    probabilities and the stop and target distances imply). Everything a rule reads is known
//!    at the signal bar's close; every size is capped at the equity.
//!
//! A signal on the grid's last bar has no next open and never trades; positions still open there
//! are closed at the last close (a market order) with reason `end`. A symbol without a bar at an
//! open keeps its orders pending (an exit) or drops them (an entry).

use super::market::Market;

/// What a signal asks for at a bar.
pub const FLAT: i8 = 0;
pub const LONG: i8 = 1;
pub const SHORT: i8 = -1;

/// The trading rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub capital: f64,
    /// Fraction of equity lost if the stop fills at its price.
    pub risk_per_trade: f64,
    pub max_positions: usize,
    pub maker_fee: f64,
    pub taker_fee: f64,
    /// Fraction of the price a market order gives away.
    pub slippage: f64,
    /// Stop distance as a fraction of the entry price; also the sizing denominator.
    pub stop: f64,
    /// Target distance as a fraction of the entry price.
    pub target: Option<f64>,
    /// Bars a position is held before it leaves at the next open.
    pub horizon: Option<usize>,
    /// Leave at the next open when the signal turns to the other side.
    pub reverse: bool,
    /// The portfolio rules; none by default.
    pub portfolio: Portfolio,
}

/// Portfolio rules, each off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Portfolio {
    /// No new entries for the rest of the UTC day once equity is this fraction below the day's
    /// opening equity.
    pub daily_loss_limit: Option<f64>,
    pub correlation: Option<CorrelationCap>,
    pub sizing: Sizing,
}

/// At most `max_correlated` positions whose trailing correlation over `window` bars exceeds
/// `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CorrelationCap {
    pub window: usize,
    pub max: f64,
    pub max_correlated: usize,
}

/// How an entry is sized.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Sizing {
    /// The stop loses `risk_per_trade` of equity.
    #[default]
    Risk,
    /// The position's annualised volatility is `target`, from the sample standard deviation of
    /// the symbol's last `window` bar returns.
    Volatility { target: f64, window: usize },
    /// `fraction` of the Kelly bet: with p and q the probabilities of the signal's move and of
    /// the opposite one, T and S the target and stop distances, the share of equity
    /// (p T - q S) / (T S (p + q)), which maximises p ln(1 + f T) + q ln(1 - f S).
    Kelly { fraction: f64 },
}

const DAY_MS: i64 = 86_400_000;

/// Why a position closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitReason {
    Stop,
    Target,
    Horizon,
    Reversal,
    End,
}

impl ExitReason {
    pub fn word(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Target => "target",
            Self::Horizon => "horizon",
            Self::Reversal => "reversal",
            Self::End => "end",
        }
    }
}

/// One closed round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct Trade {
    pub symbol: u32,
    pub side: i8,
    pub entry_bar: usize,
    pub exit_bar: usize,
    pub entry_price: f64,
    pub exit_price: f64,
    pub units: f64,
    /// Both fills' fees.
    pub fees: f64,
    /// Funding paid (negative: received).
    pub funding: f64,
    /// Price change times units, less fees and funding.
    pub pnl: f64,
    pub exit_reason: ExitReason,
}

/// Orders that did not become positions, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    /// A signal while `max_positions` were open or already ordered.
    pub capacity: u64,
    /// The size rounded to the step size fell below one step or the minimum notional.
    pub too_small: u64,
    /// The symbol had no bar at the open the entry was to fill at.
    pub no_bar: u64,
    /// A signal on the last bar: there is no next open to fill at.
    pub last_bar: u64,
    /// A signal after the day's loss reached `daily_loss_limit`.
    #[serde(default)]
    pub daily_loss_limit: u64,
    /// A signal `max_correlated` positions were already correlated with.
    #[serde(default)]
    pub correlation: u64,
    /// A signal the sizing gave no size: no trailing volatility yet, or no Kelly edge.
    #[serde(default)]
    pub sizing: u64,
}

/// Everything the simulation produced.
#[derive(Debug, Clone, Default)]
pub struct Simulation {
    pub trades: Vec<Trade>,
    /// Equity at each bar's close (after the closing trades on the last bar).
    pub equity: Vec<f64>,
    /// Open positions at each bar's close.
    pub positions: Vec<u32>,
    /// Gross notional of the open positions at each bar's close.
    pub exposure: Vec<f64>,
    /// Fees paid so far at each bar's close: `equity + fees_paid` is the equity before fees.
    pub fees_paid: Vec<f64>,
    /// Slippage paid so far at each bar's close (the fills' distance from the reference price,
    /// times their size): with `fees_paid`, what trading cost.
    pub slippage_paid: Vec<f64>,
    pub fees: f64,
    /// Slippage paid in all.
    pub slippage: f64,
    pub funding: f64,
    pub skipped: Skipped,
    /// Bars times symbols walked.
    pub bar_steps: u64,
}

/// Per-symbol trading constraints (exchangeInfo's LOT_SIZE and MIN_NOTIONAL filters); the
/// default is none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Instrument {
    /// Quantities are multiples of this; 0 = no rounding.
    pub step_size: f64,
    /// Smallest order value; 0 = none.
    pub min_notional: f64,
}

/// Signals on the market's grid: `side[cell]` is LONG, SHORT or FLAT, `score[cell]` ranks
/// competing entries (the class probability).
#[derive(Debug, Clone)]
pub struct Signals {
    pub side: Vec<i8>,
    pub score: Vec<f32>,
    /// The probability of the opposite move (for a long, the down class's), for Kelly sizing.
    pub against: Vec<f32>,
}

impl Signals {
    pub fn flat(cells: usize) -> Self {
        Self {
            side: vec![FLAT; cells],
            score: vec![0.0; cells],
            against: vec![0.0; cells],
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Position {
    symbol: u32,
    side: i8,
    units: f64,
    entry_price: f64,
    entry_bar: usize,
    stop_price: f64,
    target_price: f64,
    fees: f64,
    funding: f64,
    /// The last close seen, for marking to market through missing bars.
    mark: f64,
    leaving: Option<ExitReason>,
}

/// Rounds `units` down to a multiple of `step`, tolerating float error just below a multiple.
pub fn round_to_step(units: f64, step: f64) -> f64 {
    if step <= 0.0 {
        return units;
    }
    let steps = (units / step + 1e-9).floor();
    // Exchanges state steps in decimals (0.001): snap to the step's decimal places so 489
    // steps of 0.1 is 48.9, not 48.900000000000006.
    let decimals = (0..=12)
        .find(|&places| {
            let scaled = step * 10f64.powi(places);
            (scaled - scaled.round()).abs() < 1e-9 * scaled.max(1.0)
        })
        .unwrap_or(12);
    let scale = 10f64.powi(decimals);
    (steps * step * scale).round() / scale
}

/// Runs `signals` through `market` under `rules`. `funding[cell]`, when given, is the sum of
/// funding rates whose times fall in that bar.
pub fn simulate(
    market: &Market,
    signals: &Signals,
    instruments: &[Instrument],
    funding: Option<&[f64]>,
    rules: &Rules,
) -> Simulation {
    let symbols = market.symbols.len();
    let bars = market.times.len();
    let mut desk = Desk::new(market, signals, instruments, rules);
    for bar in 0..bars {
        let row = bar * symbols;
        // 1. The open: pending exits, then pending entries.
        desk.fill_exits(bar, row);
        desk.fill_entries(bar, row);
        // 2. Funding, for positions held through this open.
        if let Some(rates) = funding {
            desk.charge_funding(bar, row, rates);
        }
        // 3. Intrabar stops and targets.
        desk.stops_and_targets(bar, row);
        // 4. The close: mark to market; at the end close everything, else decide the next open.
        let mut gross = desk.mark_to_market(row);
        if bar + 1 == bars {
            desk.close_all(bar, row);
            gross = 0.0;
        } else {
            desk.decide(bar, row);
        }
        desk.simulation.equity.push(desk.equity);
        desk.simulation.positions.push(desk.book.len() as u32);
        desk.simulation.exposure.push(gross);
        let (fees, slipped) = (desk.simulation.fees, desk.simulation.slippage);
        desk.simulation.fees_paid.push(fees);
        desk.simulation.slippage_paid.push(slipped);
    }
    desk.simulation.bar_steps = (bars * symbols) as u64;
    desk.simulation
}

/// The account while `simulate` walks the bars: open positions, orders for the next open,
/// cash and equity, and what has happened so far.
struct Desk<'a> {
    market: &'a Market,
    signals: &'a Signals,
    instruments: &'a [Instrument],
    rules: &'a Rules,
    symbols: usize,
    capacity: usize,
    simulation: Simulation,
    book: Vec<Position>,
    held: Vec<bool>,
    /// Entries decided at a close, to fill at the next open: (symbol, side, the notional as a
    /// share of equity, NaN for risk sizing).
    orders: Vec<(u32, i8, f64)>,
    candidates: Vec<(f32, u32)>,
    cash: f64,
    equity: f64,
    /// Close-to-close returns per cell (NaN without both closes), when a rule reads them.
    returns: Vec<f64>,
    /// The UTC day of the last close, its opening equity, and whether entries stopped for it.
    day: i64,
    day_open: f64,
    halted: bool,
}

impl<'a> Desk<'a> {
    fn new(
        market: &'a Market,
        signals: &'a Signals,
        instruments: &'a [Instrument],
        rules: &'a Rules,
    ) -> Self {
        let symbols = market.symbols.len();
        let bars = market.times.len();
        let capacity = rules.max_positions.max(1);
        Self {
            market,
            signals,
            instruments,
            rules,
            symbols,
            capacity,
            simulation: Simulation {
                trades: Vec::with_capacity(1024),
                equity: Vec::with_capacity(bars),
                positions: Vec::with_capacity(bars),
                exposure: Vec::with_capacity(bars),
                fees_paid: Vec::with_capacity(bars),
                slippage_paid: Vec::with_capacity(bars),
                ..Simulation::default()
            },
            book: Vec::with_capacity(capacity),
            held: vec![false; symbols],
            orders: Vec::with_capacity(capacity),
            candidates: Vec::with_capacity(symbols),
            cash: rules.capital,
            equity: rules.capital,
            returns: if rules.portfolio.correlation.is_some()
                || matches!(rules.portfolio.sizing, Sizing::Volatility { .. })
            {
                bar_returns(market)
            } else {
                Vec::new()
            },
            day: market
                .times
                .first()
                .map_or(0, |time| time.div_euclid(DAY_MS)),
            day_open: rules.capital,
            halted: false,
        }
    }

    /// Pearson correlation of two symbols' returns over the `window` bars to `bar`, over the
    /// bars where both have one; `None` with fewer than three such bars or no variation.
    fn correlation(&self, a: usize, b: usize, bar: usize, window: usize) -> Option<f64> {
        let (mut n, mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for k in (bar + 1).saturating_sub(window)..=bar {
            let (ra, rb) = (
                self.returns[k * self.symbols + a],
                self.returns[k * self.symbols + b],
            );
            if ra.is_finite() && rb.is_finite() {
                n += 1.0;
                sa += ra;
                sb += rb;
                saa += ra * ra;
                sbb += rb * rb;
                sab += ra * rb;
            }
        }
        if n < 3.0 {
            return None;
        }
        let covariance = sab - sa * sb / n;
        let (va, vb) = (saa - sa * sa / n, sbb - sb * sb / n);
        (va > 0.0 && vb > 0.0).then(|| covariance / (va * vb).sqrt())
    }

    /// The sample standard deviation of a symbol's returns over the `window` bars to `bar`;
    /// `None` with fewer than two.
    fn volatility(&self, symbol: usize, bar: usize, window: usize) -> Option<f64> {
        let (mut n, mut sum, mut squares) = (0.0, 0.0, 0.0);
        for k in (bar + 1).saturating_sub(window)..=bar {
            let r = self.returns[k * self.symbols + symbol];
            if r.is_finite() {
                n += 1.0;
                sum += r;
                squares += r * r;
            }
        }
        (n >= 2.0).then(|| ((squares - sum * sum / n) / (n - 1.0)).max(0.0).sqrt())
    }

    /// The notional of an entry as a share of equity under the sizing (NaN: risk sizing), or
    /// `None` when the sizing gives it none.
    fn size_share(&self, cell: usize, symbol: usize, bar: usize) -> Option<f64> {
        let rules = self.rules;
        match rules.portfolio.sizing {
            Sizing::Risk => Some(f64::NAN),
            Sizing::Volatility { target, window } => {
                let periods = super::metrics::periods_per_year(self.market.bar_ms);
                let annualised = self.volatility(symbol, bar, window)? * periods.sqrt();
                (annualised > 0.0).then(|| target / annualised)
            }
            Sizing::Kelly { fraction } => {
                let (p, q) = (
                    f64::from(self.signals.score[cell]),
                    f64::from(self.signals.against[cell]),
                );
                let (t, s) = (rules.target?, rules.stop);
                let kelly = (p * t - q * s) / (t * s * (p + q));
                (kelly.is_finite() && kelly > 0.0).then_some(fraction * kelly)
            }
        }
    }

    /// Closes `book[index]` at `price` and frees its symbol.
    fn close(&mut self, index: usize, bar: usize, price: f64, fee_rate: f64, reason: ExitReason) {
        let position = self.book.swap_remove(index);
        self.cash += close_position(&mut self.simulation, position, bar, price, fee_rate, reason);
        self.held[position.symbol as usize] = false;
    }

    /// Positions marked to leave fill at this open, where their symbol has a bar.
    fn fill_exits(&mut self, bar: usize, row: usize) {
        let mut index = 0;
        while index < self.book.len() {
            let position = self.book[index];
            let open = self.market.open[row + position.symbol as usize];
            match position.leaving {
                Some(reason) if !open.is_nan() => {
                    let price = open * (1.0 - f64::from(position.side) * self.rules.slippage);
                    self.simulation.slippage += position.units * open * self.rules.slippage;
                    self.close(index, bar, price, self.rules.taker_fee, reason);
                }
                _ => index += 1,
            }
        }
    }

    /// The orders decided at the last close fill at this open, sized by risk and capped.
    fn fill_entries(&mut self, bar: usize, row: usize) {
        let rules = self.rules;
        for &(symbol, side, share) in &self.orders {
            let open = self.market.open[row + symbol as usize];
            if open.is_nan() {
                self.simulation.skipped.no_bar += 1;
                continue;
            }
            // An exit counted on at the close may not have filled (its symbol had no bar).
            if self.book.len() >= self.capacity {
                self.simulation.skipped.capacity += 1;
                continue;
            }
            let price = open * (1.0 + f64::from(side) * rules.slippage);
            let instrument = self.instruments[symbol as usize];
            let wanted = if share.is_nan() {
                rules.risk_per_trade * self.equity / (price * rules.stop)
            } else {
                share * self.equity / price
            };
            // No single position is larger than the account.
            let units = round_to_step(wanted.min(self.equity / price), instrument.step_size);
            let notional = units * price;
            if units <= 0.0 || notional < instrument.min_notional {
                self.simulation.skipped.too_small += 1;
                continue;
            }
            let fee = notional * rules.taker_fee;
            self.simulation.slippage += units * open * rules.slippage;
            self.cash -= fee;
            self.simulation.fees += fee;
            let direction = f64::from(side);
            self.book.push(Position {
                symbol,
                side,
                units,
                entry_price: price,
                entry_bar: bar,
                stop_price: price * (1.0 - direction * rules.stop),
                target_price: rules
                    .target
                    .map_or(f64::NAN, |target| price * (1.0 + direction * target)),
                fees: fee,
                funding: 0.0,
                mark: price,
                leaving: None,
            });
            self.held[symbol as usize] = true;
        }
        self.orders.clear();
    }

    /// Funding for positions held through this open (not those that just entered).
    fn charge_funding(&mut self, bar: usize, row: usize, rates: &[f64]) {
        for position in self.book.iter_mut().filter(|p| p.entry_bar < bar) {
            let cell = row + position.symbol as usize;
            let rate = rates[cell];
            // Without a bar, the position is still held: price it at its last close.
            let open = self.market.open[cell];
            let price = if open.is_nan() { position.mark } else { open };
            if rate != 0.0 {
                let paid = f64::from(position.side) * position.units * price * rate;
                position.funding += paid;
                self.cash -= paid;
                self.simulation.funding += paid;
            }
        }
    }

    /// Stops before targets when one bar reaches both; a gap through a level fills at the open.
    fn stops_and_targets(&mut self, bar: usize, row: usize) {
        let slip = self.rules.slippage;
        let mut index = 0;
        while index < self.book.len() {
            let position = self.book[index];
            let cell = row + position.symbol as usize;
            let market = self.market;
            let (open, high, low) = (market.open[cell], market.high[cell], market.low[cell]);
            if open.is_nan() {
                index += 1;
                continue;
            }
            let long = position.side == LONG;
            let (adverse, favourable) = if long { (low, high) } else { (high, low) };
            let beyond = |price: f64, level: f64, toward_loss: bool| {
                // Whether `price` is at or past `level` in the losing (or winning) direction.
                if long == toward_loss {
                    price <= level
                } else {
                    price >= level
                }
            };
            let exit = if beyond(adverse, position.stop_price, true) {
                let level = if beyond(open, position.stop_price, true) {
                    open
                } else {
                    position.stop_price
                };
                let price = level * (1.0 - f64::from(position.side) * slip);
                self.simulation.slippage += position.units * level * slip;
                Some((price, self.rules.taker_fee, ExitReason::Stop))
            } else if !position.target_price.is_nan()
                && beyond(favourable, position.target_price, false)
            {
                let price = if beyond(open, position.target_price, false) {
                    open
                } else {
                    position.target_price
                };
                Some((price, self.rules.maker_fee, ExitReason::Target))
            } else {
                None
            };
            match exit {
                Some((price, fee_rate, reason)) => self.close(index, bar, price, fee_rate, reason),
                None => index += 1,
            }
        }
    }

    /// Marks the book at this close (the last close seen where a symbol has no bar); sets the
    /// equity and returns the gross exposure.
    fn mark_to_market(&mut self, row: usize) -> f64 {
        let mut unrealised = 0.0;
        let mut gross = 0.0;
        for position in self.book.iter_mut() {
            let close = self.market.close[row + position.symbol as usize];
            if !close.is_nan() {
                position.mark = close;
            }
            unrealised +=
                f64::from(position.side) * position.units * (position.mark - position.entry_price);
            gross += position.units * position.mark;
        }
        self.equity = self.cash + unrealised;
        gross
    }

    /// The end: closes what is open at the last close; signals here cannot fill.
    fn close_all(&mut self, bar: usize, row: usize) {
        self.simulation.skipped.last_bar += self.signals.side[row..row + self.symbols]
            .iter()
            .filter(|&&side| side != FLAT)
            .count() as u64;
        let slip = self.rules.slippage;
        while let Some(position) = self.book.pop() {
            let price = position.mark * (1.0 - f64::from(position.side) * slip);
            self.simulation.slippage += position.units * position.mark * slip;
            self.cash += close_position(
                &mut self.simulation,
                position,
                bar,
                price,
                self.rules.taker_fee,
                ExitReason::End,
            );
        }
        self.equity = self.cash;
    }

    /// Decisions for the next open: exits by horizon or reversal, then entries, strongest
    /// first, into the slots that will be free.
    fn decide(&mut self, bar: usize, row: usize) {
        let (rules, signals) = (self.rules, self.signals);
        let mut leaving = 0;
        for position in self.book.iter_mut() {
            let cell = row + position.symbol as usize;
            let held_bars = bar + 1 - position.entry_bar;
            if position.leaving.is_some() {
                // Still waiting for a bar to leave at.
            } else if rules.horizon.is_some_and(|horizon| held_bars >= horizon) {
                position.leaving = Some(ExitReason::Horizon);
            } else if rules.reverse && signals.side[cell] == -position.side {
                position.leaving = Some(ExitReason::Reversal);
            }
            if position.leaving.is_some() {
                leaving += 1;
            }
        }
        self.candidates.clear();
        let sides = &signals.side[row..row + self.symbols];
        for (symbol, (&side, &holding)) in sides.iter().zip(&self.held).enumerate() {
            if side == FLAT {
                continue;
            }
            // A symbol already held takes no second position, unless it is leaving at the
            // next open because the signal reversed.
            if holding
                && !self
                    .book
                    .iter()
                    .any(|p| p.symbol as usize == symbol && p.leaving.is_some() && p.side != side)
            {
                continue;
            }
            self.candidates
                .push((signals.score[row + symbol], symbol as u32));
        }
        // Strongest first; ties go to the lower symbol index, so runs are reproducible.
        self.candidates
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let free = self.capacity.saturating_sub(self.book.len() - leaving);
        let portfolio = rules.portfolio;
        if let Some(limit) = portfolio.daily_loss_limit {
            // A close at 00:00 opens its day: the equity there is the day's opening equity.
            let day = (self.market.times[bar] + self.market.bar_ms).div_euclid(DAY_MS);
            if day != self.day {
                (self.day, self.day_open, self.halted) = (day, self.equity, false);
            }
            self.halted |= self.equity <= self.day_open * (1.0 - limit);
        }
        let candidates = std::mem::take(&mut self.candidates);
        for &(_, symbol) in &candidates {
            let (symbol, cell) = (symbol as usize, row + symbol as usize);
            if self.halted {
                self.simulation.skipped.daily_loss_limit += 1;
                continue;
            }
            if self.orders.len() >= free {
                self.simulation.skipped.capacity += 1;
                continue;
            }
            if let Some(cap) = portfolio.correlation {
                let correlated = self
                    .book
                    .iter()
                    .filter(|position| position.leaving.is_none())
                    .map(|position| position.symbol as usize)
                    .chain(self.orders.iter().map(|order| order.0 as usize))
                    .filter(|&other| {
                        other != symbol
                            && self
                                .correlation(symbol, other, bar, cap.window)
                                .is_some_and(|rho| rho > cap.max)
                    })
                    .count();
                if correlated >= cap.max_correlated {
                    self.simulation.skipped.correlation += 1;
                    continue;
                }
            }
            let Some(share) = self.size_share(cell, symbol, bar) else {
                self.simulation.skipped.sizing += 1;
                continue;
            };
            self.orders.push((symbol as u32, signals.side[cell], share));
        }
        self.candidates = candidates;
    }
}

/// Close-to-close returns of every cell, NaN where either close is missing.
fn bar_returns(market: &Market) -> Vec<f64> {
    let symbols = market.symbols.len();
    let mut returns = vec![f64::NAN; symbols.min(market.close.len())];
    returns.extend(
        market
            .close
            .iter()
            .skip(symbols)
            .zip(&market.close)
            .map(|(now, before)| now / before - 1.0),
    );
    returns
}

/// Closes `position` at `price` (slippage already applied), records the trade and returns the
/// cash it releases: the price change less the exit fee.
fn close_position(
    simulation: &mut Simulation,
    position: Position,
    bar: usize,
    price: f64,
    fee_rate: f64,
    reason: ExitReason,
) -> f64 {
    let fee = position.units * price * fee_rate;
    let change = f64::from(position.side) * position.units * (price - position.entry_price);
    simulation.fees += fee;
    let fees = position.fees + fee;
    simulation.trades.push(Trade {
        symbol: position.symbol,
        side: position.side,
        entry_bar: position.entry_bar,
        exit_bar: bar,
        entry_price: position.entry_price,
        exit_price: price,
        units: position.units,
        fees,
        funding: position.funding,
        pnl: change - fees - position.funding,
        exit_reason: reason,
    });
    change - fee
}

/// The benchmark: the same capital split equally over the symbols, each share bought at the
/// symbol's first open on the grid (a market order) and sold at its last close. Equity at each
/// bar's close; a share not yet bought is cash.
pub fn buy_and_hold(market: &Market, rules: &Rules) -> Vec<f64> {
    let symbols = market.symbols.len();
    let bars = market.times.len();
    let mut curve = Vec::with_capacity(bars);
    if symbols == 0 {
        curve.resize(bars, rules.capital);
        return curve;
    }
    let share = rules.capital / symbols as f64;
    // Per symbol: units held (0 until bought) and the last close seen.
    let mut units = vec![0.0; symbols];
    let mut mark = vec![f64::NAN; symbols];
    let mut cash = rules.capital;
    for bar in 0..bars {
        let row = bar * symbols;
        for symbol in 0..symbols {
            let cell = row + symbol;
            if units[symbol] == 0.0 && !market.open[cell].is_nan() {
                let price = market.open[cell] * (1.0 + rules.slippage);
                // The fee comes out of the share, so the share buys slightly less.
                units[symbol] = share / (price * (1.0 + rules.taker_fee));
                cash -= share;
            }
            if !market.close[cell].is_nan() {
                mark[symbol] = market.close[cell];
            }
        }
        let mut value = cash;
        for symbol in 0..symbols {
            if units[symbol] > 0.0 {
                let price = if bar + 1 == bars {
                    mark[symbol] * (1.0 - rules.slippage) * (1.0 - rules.taker_fee)
                } else {
                    mark[symbol]
                };
                value += units[symbol] * price;
            }
        }
        curve.push(value);
    }
    curve
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    /// A market of `bars[symbol][bar] = (open, high, low, close)`, hourly from 0.
    fn market(bars: &[&[(f64, f64, f64, f64)]]) -> Market {
        let length = bars.iter().map(|series| series.len()).max().unwrap();
        let symbols = (0..bars.len()).map(|s| format!("S{s}")).collect();
        let mut market = Market::new(symbols, 0, (length as i64 - 1) * HOUR, HOUR).unwrap();
        for (symbol, series) in bars.iter().enumerate() {
            for (bar, &(o, h, l, c)) in series.iter().enumerate() {
                if !o.is_nan() {
                    assert!(market.set(symbol, bar as i64 * HOUR, [o, h, l, c]));
                }
            }
        }
        market
    }

    fn signals(market: &Market, entries: &[(usize, usize, i8, f32)]) -> Signals {
        let mut signals = Signals::flat(market.cells());
        for &(bar, symbol, side, score) in entries {
            let cell = bar * market.symbols.len() + symbol;
            signals.side[cell] = side;
            signals.score[cell] = score;
        }
        signals
    }

    fn rules() -> Rules {
        Rules {
            capital: 10_000.0,
            risk_per_trade: 0.01,
            max_positions: 5,
            maker_fee: 0.0005,
            taker_fee: 0.001,
            slippage: 0.001,
            stop: 0.02,
            target: None,
            horizon: Some(2),
            reverse: false,
            portfolio: Portfolio::default(),
        }
    }

    fn flat(price: f64) -> (f64, f64, f64, f64) {
        (price, price + 1.0, price - 1.0, price)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn a_long_fills_at_the_next_open_pays_both_fees_and_slips_against_itself() {
        let market = market(&[&[
            flat(100.0),
            flat(102.0),
            flat(104.0),
            flat(106.0),
            flat(108.0),
        ]]);
        let signals = signals(&market, &[(0, 0, LONG, 0.9)]);
        let result = simulate(&market, &signals, &[Instrument::default()], None, &rules());
        assert_eq!(result.trades.len(), 1, "{result:?}");
        let trade = &result.trades[0];
        // Signal at bar 0's close -> bought at bar 1's open, 0.1% higher.
        assert_eq!((trade.entry_bar, trade.side), (1, LONG));
        assert!(close(trade.entry_price, 102.102));
        // Risk sizing: 1% of 10,000 at a 2% stop is a 5,000 position.
        assert!(close(trade.units * trade.entry_price, 5_000.0));
        // Held 2 bars (1 and 2), sold at bar 3's open, 0.1% lower.
        assert_eq!(
            (trade.exit_bar, trade.exit_reason),
            (3, ExitReason::Horizon)
        );
        assert!(close(trade.exit_price, 105.894));
        // Taker fee on both fills.
        let exit_fee = trade.units * 105.894 * 0.001;
        assert!(close(trade.fees, 5.0 + exit_fee));
        let pnl = trade.units * (105.894 - 102.102) - 5.0 - exit_fee;
        assert!(close(trade.pnl, pnl));
        assert!(close(*result.equity.last().unwrap(), 10_000.0 + pnl));
        // Marked to market at bar 1's close: 102 against 102.102 paid, less the entry fee.
        assert!(close(
            result.equity[1],
            10_000.0 - 5.0 + trade.units * (102.0 - 102.102)
        ));
        assert_eq!(result.positions, vec![0, 1, 1, 0, 0]);
        assert!(close(result.fees, trade.fees));
    }

    #[test]
    fn a_short_sells_below_the_open_and_buys_back_above_it() {
        let market = market(&[&[flat(100.0), flat(100.0), flat(98.0), flat(96.0), flat(95.0)]]);
        let signals = signals(&market, &[(0, 0, SHORT, 0.8)]);
        let result = simulate(&market, &signals, &[Instrument::default()], None, &rules());
        let trade = &result.trades[0];
        assert_eq!(trade.side, SHORT);
        assert!(close(trade.entry_price, 99.9));
        assert!(close(trade.exit_price, 96.0 * 1.001));
        assert!(trade.pnl > 0.0, "the price fell: {trade:?}");
        // The stop sits above a short's entry.
        let expected = trade.units * (99.9 - 96.096) - trade.fees;
        assert!(close(trade.pnl, expected));
    }

    #[test]
    fn a_bar_touching_both_stop_and_target_takes_the_stop() {
        let rules = Rules {
            slippage: 0.0,
            target: Some(0.04),
            horizon: None,
            ..rules()
        };
        // Entry at 100: stop 98, target 104; bar 1 reaches both.
        let both = market(&[&[flat(100.0), (100.0, 105.0, 97.0, 101.0), flat(101.0)]]);
        let result = simulate(
            &both,
            &signals(&both, &[(0, 0, LONG, 1.0)]),
            &[Instrument::default()],
            None,
            &rules,
        );
        let trade = &result.trades[0];
        assert_eq!((trade.exit_reason, trade.exit_bar), (ExitReason::Stop, 1));
        assert!(close(trade.exit_price, 98.0));
        assert!(
            close(trade.fees, trade.units * (100.0 + 98.0) * 0.001),
            "stops pay taker"
        );

        // Only the target: filled at its price as a resting limit order, maker fee.
        let target = market(&[&[flat(100.0), (100.0, 105.0, 99.0, 101.0), flat(101.0)]]);
        let result = simulate(
            &target,
            &signals(&target, &[(0, 0, LONG, 1.0)]),
            &[Instrument::default()],
            None,
            &rules,
        );
        let trade = &result.trades[0];
        assert_eq!(trade.exit_reason, ExitReason::Target);
        assert!(close(trade.exit_price, 104.0));
        assert!(close(
            trade.fees,
            trade.units * (100.0 * 0.001 + 104.0 * 0.0005)
        ));

        // A gap through the stop fills at the open, not at the stop.
        let gap = market(&[&[
            flat(100.0),
            flat(100.0),
            (95.0, 96.0, 94.0, 95.0),
            flat(95.0),
        ]]);
        let result = simulate(
            &gap,
            &signals(&gap, &[(0, 0, LONG, 1.0)]),
            &[Instrument::default()],
            None,
            &rules,
        );
        let trade = &result.trades[0];
        assert_eq!((trade.exit_reason, trade.exit_bar), (ExitReason::Stop, 2));
        assert!(close(trade.exit_price, 95.0));
    }

    #[test]
    fn no_more_than_max_positions_strongest_signals_first() {
        let rules = Rules {
            max_positions: 2,
            ..rules()
        };
        let bars = [flat(10.0), flat(10.0), flat(10.0), flat(10.0), flat(10.0)];
        let market = market(&[&bars, &bars, &bars]);
        let signals = signals(
            &market,
            &[(0, 0, LONG, 0.6), (0, 1, LONG, 0.9), (0, 2, LONG, 0.7)],
        );
        let result = simulate(&market, &signals, &[Instrument::default(); 3], None, &rules);
        let mut entered: Vec<u32> = result.trades.iter().map(|trade| trade.symbol).collect();
        entered.sort();
        assert_eq!(entered, vec![1, 2]);
        assert_eq!(result.skipped.capacity, 1);
        assert!(result.positions.iter().all(|&open| open <= 2));
    }

    #[test]
    fn sizes_round_down_to_the_step_and_respect_the_minimum_notional() {
        assert_eq!(round_to_step(48.97, 0.1), 48.9);
        assert_eq!(
            round_to_step(0.3, 0.1),
            0.3,
            "exact multiples survive float error"
        );
        let bars = [flat(100.0), flat(100.0), flat(100.0), flat(100.0)];
        let market = market(&[&bars, &bars]);
        let rules = Rules {
            slippage: 0.0,
            stop: 0.03,
            ..rules()
        };
        let instruments = [
            // 1% of 10,000 at a 3% stop: 3,333.33 at 100 is 33.333 units -> 33 with step 1.
            Instrument {
                step_size: 1.0,
                min_notional: 5.0,
            },
            // The same order is below this symbol's minimum notional.
            Instrument {
                step_size: 0.001,
                min_notional: 5_000.0,
            },
        ];
        let signals = signals(&market, &[(0, 0, LONG, 1.0), (0, 1, LONG, 1.0)]);
        let result = simulate(&market, &signals, &instruments, None, &rules);
        assert_eq!(result.trades.len(), 1);
        assert_eq!(result.trades[0].units, 33.0);
        assert_eq!(result.skipped.too_small, 1);
    }

    #[test]
    fn a_position_is_never_larger_than_the_account() {
        // A 0.5% stop would ask for 20,000 of notional on 10,000 of equity.
        let rules = Rules {
            slippage: 0.0,
            stop: 0.005,
            ..rules()
        };
        let market = market(&[&[flat(100.0), flat(100.0), flat(100.0), flat(100.0)]]);
        let result = simulate(
            &market,
            &signals(&market, &[(0, 0, LONG, 1.0)]),
            &[Instrument::default()],
            None,
            &rules,
        );
        assert!(close(result.trades[0].units, 100.0));
    }

    #[test]
    fn the_last_bars_signal_never_trades_and_open_positions_close_at_the_end() {
        let market = market(&[&[flat(100.0), flat(101.0), flat(102.0)]]);
        let rules = Rules {
            horizon: None,
            ..rules()
        };
        let signals = signals(&market, &[(1, 0, LONG, 1.0), (2, 0, SHORT, 1.0)]);
        let result = simulate(&market, &signals, &[Instrument::default()], None, &rules);
        assert_eq!(result.trades.len(), 1, "{:?}", result.trades);
        let trade = &result.trades[0];
        assert_eq!((trade.entry_bar, trade.exit_bar), (2, 2));
        assert_eq!(trade.exit_reason, ExitReason::End);
        assert!(close(trade.exit_price, 102.0 * 0.999));
        assert_eq!(result.skipped.last_bar, 1);
        assert_eq!(*result.positions.last().unwrap(), 0);
    }

    #[test]
    fn a_reversed_signal_exits_at_the_next_open_and_may_turn_the_position() {
        let market = market(&[&[
            flat(100.0),
            flat(100.0),
            flat(100.0),
            flat(100.0),
            flat(100.0),
        ]]);
        let rules = Rules {
            horizon: None,
            reverse: true,
            ..rules()
        };
        let signals = signals(&market, &[(0, 0, LONG, 1.0), (1, 0, SHORT, 1.0)]);
        let result = simulate(&market, &signals, &[Instrument::default()], None, &rules);
        assert_eq!(result.trades.len(), 2, "{:?}", result.trades);
        assert_eq!(result.trades[0].exit_reason, ExitReason::Reversal);
        assert_eq!(result.trades[0].exit_bar, 2);
        assert_eq!(
            (result.trades[1].side, result.trades[1].entry_bar),
            (SHORT, 2)
        );
    }

    #[test]
    fn funding_is_charged_to_positions_held_through_the_funding_time() {
        let market = market(&[&[
            flat(100.0),
            flat(100.0),
            flat(100.0),
            flat(100.0),
            flat(100.0),
        ]]);
        let rules = Rules {
            slippage: 0.0,
            horizon: Some(3),
            ..rules()
        };
        let mut rates = vec![0.0; market.cells()];
        rates[1] = 0.5; // at the entry open: not yet held
        rates[2] = 0.0001; // held through: a long pays
        rates[3] = -0.0002; // a negative rate: a long receives
        let signals = signals(&market, &[(0, 0, LONG, 1.0)]);
        let result = simulate(
            &market,
            &signals,
            &[Instrument::default()],
            Some(&rates),
            &rules,
        );
        let trade = &result.trades[0];
        let expected = trade.units * 100.0 * (0.0001 - 0.0002);
        assert!(close(trade.funding, expected), "{trade:?}");
        assert!(close(result.funding, expected));
        assert!(close(trade.pnl, -trade.fees - expected));
    }

    #[test]
    fn a_missing_bar_delays_an_exit_and_drops_an_entry() {
        let nan = (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
        let market = market(&[
            &[
                flat(100.0),
                flat(100.0),
                flat(100.0),
                nan,
                flat(100.0),
                flat(100.0),
            ],
            &[
                flat(50.0),
                nan,
                flat(50.0),
                flat(50.0),
                flat(50.0),
                flat(50.0),
            ],
        ]);
        let signals = signals(&market, &[(0, 0, LONG, 1.0), (0, 1, LONG, 1.0)]);
        let result = simulate(
            &market,
            &signals,
            &[Instrument::default(); 2],
            None,
            &rules(),
        );
        assert_eq!(result.skipped.no_bar, 1);
        assert_eq!(result.trades.len(), 1);
        // Due out at bar 3's open, which is missing: out at bar 4's.
        assert_eq!(result.trades[0].exit_bar, 4);
    }

    #[test]
    fn an_exit_delayed_by_a_missing_bar_still_holds_its_slot() {
        // One slot. A leaves at bar 3's open by horizon, but A has no bar 3: B's entry, decided
        // at bar 2's close counting on A's slot, must not fill beside it.
        let nan = (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
        let market = market(&[
            &[
                flat(100.0),
                flat(100.0),
                flat(100.0),
                nan,
                flat(100.0),
                flat(100.0),
            ],
            &[
                flat(50.0),
                flat(50.0),
                flat(50.0),
                flat(50.0),
                flat(50.0),
                flat(50.0),
            ],
        ]);
        let rules = Rules {
            max_positions: 1,
            ..rules()
        };
        let signals = signals(&market, &[(0, 0, LONG, 1.0), (2, 1, LONG, 1.0)]);
        let result = simulate(&market, &signals, &[Instrument::default(); 2], None, &rules);
        assert!(
            result.positions.iter().all(|&open| open <= 1),
            "{:?}",
            result.positions
        );
        assert_eq!(result.skipped.capacity, 1);
    }

    #[test]
    fn funding_is_charged_through_a_missing_bar_at_the_last_close() {
        let nan = (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
        let market = market(&[&[
            flat(100.0),
            flat(100.0),
            (100.0, 101.0, 99.0, 98.0),
            nan,
            flat(98.0),
            flat(98.0),
        ]]);
        let rules = Rules {
            slippage: 0.0,
            horizon: Some(4),
            ..rules()
        };
        let mut rates = vec![0.0; market.cells()];
        rates[3] = 0.001;
        let signals = signals(&market, &[(0, 0, LONG, 1.0)]);
        let result = simulate(
            &market,
            &signals,
            &[Instrument::default()],
            Some(&rates),
            &rules,
        );
        let trade = &result.trades[0];
        assert!(
            close(trade.funding, trade.units * 98.0 * 0.001),
            "{trade:?}"
        );
    }

    #[test]
    fn buy_and_hold_splits_the_capital_and_pays_both_fills() {
        let market = market(&[&[flat(100.0), flat(110.0)], &[flat(10.0), flat(5.0)]]);
        let rules = Rules {
            slippage: 0.0,
            taker_fee: 0.0,
            ..rules()
        };
        let curve = buy_and_hold(&market, &rules);
        // 5,000 each: 50 units at 100 -> 110; 500 units at 10 -> 5.
        assert!(close(curve[1], 50.0 * 110.0 + 500.0 * 5.0));
        let costly = buy_and_hold(
            &market,
            &Rules {
                taker_fee: 0.001,
                ..rules
            },
        );
        assert!(costly[1] < curve[1]);
    }

    /// Hourly bars from closes: open at the previous close, high and low 0.1% around.
    fn from_closes(series: &[Vec<f64>]) -> Market {
        let bars: Vec<Vec<(f64, f64, f64, f64)>> = series
            .iter()
            .map(|closes| {
                closes
                    .iter()
                    .enumerate()
                    .map(|(k, &c)| {
                        let o = if k == 0 { c } else { closes[k - 1] };
                        (o, o.max(c) * 1.001, o.min(c) * 0.999, c)
                    })
                    .collect()
            })
            .collect();
        let slices: Vec<&[(f64, f64, f64, f64)]> = bars.iter().map(Vec::as_slice).collect();
        market(&slices)
    }

    fn plain() -> Rules {
        Rules {
            maker_fee: 0.0,
            taker_fee: 0.0,
            slippage: 0.0,
            ..rules()
        }
    }

    #[test]
    fn the_daily_loss_limit_stops_entries_for_the_rest_of_the_day_and_resumes_the_next() {
        // Symbol 0 is bought with the whole account at bar 1's open (100) and closes bar 1 at
        // 90: equity 9,000, 10% below the day's 10,000.
        let mut falling = vec![100.0, 90.0];
        falling.extend(std::iter::repeat_n(90.0, 46));
        let steady = vec![50.0; 48];
        let market = from_closes(&[falling, steady]);
        let rules = Rules {
            risk_per_trade: 0.5,
            stop: 0.5,
            horizon: None,
            portfolio: Portfolio {
                daily_loss_limit: Some(0.05),
                ..Portfolio::default()
            },
            ..plain()
        };
        // A signal for symbol 1 at bar 5 (day 0) is refused; one at bar 30 (day 1, whose
        // opening equity is the 9,000 at 00:00) is taken.
        let signals = signals(
            &market,
            &[(0, 0, LONG, 0.9), (5, 1, LONG, 0.9), (30, 1, LONG, 0.9)],
        );
        let result = simulate(&market, &signals, &[Instrument::default(); 2], None, &rules);
        assert_eq!(result.skipped.daily_loss_limit, 1, "{:?}", result.skipped);
        let entries: Vec<(u32, usize)> = result
            .trades
            .iter()
            .map(|trade| (trade.symbol, trade.entry_bar))
            .collect();
        assert!(entries.contains(&(1, 31)), "{entries:?}");
        assert!(!entries.contains(&(1, 6)), "{entries:?}");
        // The losing position keeps its exit: it is held to the end, not closed by the limit.
        let first = result.trades.iter().find(|t| t.symbol == 0).unwrap();
        assert_eq!(first.exit_reason, ExitReason::End);
        // Without the limit the day-0 signal trades.
        let free = simulate(
            &market,
            &signals,
            &[Instrument::default(); 2],
            None,
            &Rules {
                portfolio: Portfolio::default(),
                ..rules
            },
        );
        assert!(
            free.trades
                .iter()
                .any(|t| (t.symbol, t.entry_bar) == (1, 6))
        );
    }

    /// Closes from returns: symbols 0 to 2 share one random walk, symbol 3 has its own.
    fn correlated_market(bars: usize) -> Market {
        let mut rng = crate::util::rng::Rng::new(3);
        let (shared, own): (Vec<f64>, Vec<f64>) = (0..bars)
            .map(|_| (0.01 * rng.normal(), 0.01 * rng.normal()))
            .unzip();
        let walk = |start: f64, returns: &[f64]| -> Vec<f64> {
            let mut price = start;
            returns
                .iter()
                .map(|r| {
                    price *= 1.0 + r;
                    price
                })
                .collect()
        };
        from_closes(&[
            walk(100.0, &shared),
            walk(50.0, &shared),
            walk(20.0, &shared),
            walk(10.0, &own),
        ])
    }

    #[test]
    fn the_correlation_cap_skips_the_third_correlated_entry_but_not_an_uncorrelated_one() {
        let market = correlated_market(60);
        let rules = Rules {
            portfolio: Portfolio {
                correlation: Some(CorrelationCap {
                    window: 20,
                    max: 0.8,
                    max_correlated: 2,
                }),
                ..Portfolio::default()
            },
            ..plain()
        };
        // All four at bar 30, strongest first: 0, 1, 2, 3.
        let signals = signals(
            &market,
            &[
                (30, 0, LONG, 0.9),
                (30, 1, LONG, 0.8),
                (30, 2, LONG, 0.7),
                (30, 3, LONG, 0.6),
            ],
        );
        let result = simulate(&market, &signals, &[Instrument::default(); 4], None, &rules);
        let mut taken: Vec<u32> = result.trades.iter().map(|trade| trade.symbol).collect();
        taken.sort_unstable();
        assert_eq!(taken, vec![0, 1, 3]);
        assert_eq!(result.skipped.correlation, 1);
    }

    #[test]
    fn volatility_sizing_targets_the_annualised_volatility_worked_by_hand() {
        // Returns alternate +1% and -1%: over 20 of them the mean is 0 and the sample standard
        // deviation 0.01 * sqrt(20 / 19); a year has 8760 hourly bars.
        let mut closes = vec![100.0];
        for k in 0..40 {
            let last = *closes.last().unwrap();
            closes.push(last * if k % 2 == 0 { 1.01 } else { 0.99 });
        }
        let market = from_closes(&[closes.clone()]);
        let rules = Rules {
            portfolio: Portfolio {
                sizing: Sizing::Volatility {
                    target: 0.5,
                    window: 20,
                },
                ..Portfolio::default()
            },
            ..plain()
        };
        let signals = signals(&market, &[(30, 0, LONG, 0.9), (1, 0, LONG, 0.9)]);
        let result = simulate(&market, &signals, &[Instrument::default()], None, &rules);
        // The bar-1 signal has one return behind it: no volatility, no size.
        assert_eq!(result.skipped.sizing, 1);
        let trade = &result.trades[0];
        let annualised = 0.01 * (20.0f64 / 19.0).sqrt() * 8760.0f64.sqrt();
        let equity = result.equity[30];
        assert!(
            close(trade.units * trade.entry_price, 0.5 / annualised * equity),
            "{} vs {}",
            trade.units * trade.entry_price,
            0.5 / annualised * equity
        );
        // Nothing after the signal bar counts: other prices from bar 31 on, the same size.
        let mut changed = closes;
        for close in changed.iter_mut().skip(32) {
            *close *= 1.5;
        }
        let other = simulate(
            &from_closes(&[changed]),
            &signals,
            &[Instrument::default()],
            None,
            &rules,
        );
        assert!(close(other.trades[0].units, trade.units));
    }

    #[test]
    fn kelly_sizing_bets_a_fraction_of_the_kelly_share_and_skips_a_negative_edge() {
        let market = from_closes(&[vec![100.0; 10], vec![100.0; 10]]);
        let rules = Rules {
            stop: 0.5,
            target: Some(0.5),
            horizon: Some(1),
            portfolio: Portfolio {
                sizing: Sizing::Kelly { fraction: 0.25 },
                ..Portfolio::default()
            },
            ..plain()
        };
        let mut signals = signals(&market, &[(2, 0, LONG, 0.6), (2, 1, LONG, 0.3)]);
        // Symbol 0: up 0.6, down 0.4; symbol 1: up 0.3, down 0.6.
        signals.against[2 * 2] = 0.4;
        signals.against[2 * 2 + 1] = 0.6;
        let result = simulate(&market, &signals, &[Instrument::default(); 2], None, &rules);
        // (0.6 * 0.5 - 0.4 * 0.5) / (0.5 * 0.5 * 1.0) = 0.4 of equity; a quarter: 0.1 (the
        // probabilities are stored as f32: to seven digits).
        assert_eq!(result.trades.len(), 1);
        let notional = result.trades[0].units * 100.0;
        assert!((notional - 0.1 * 10_000.0).abs() < 1e-3, "{notional}");
        // (0.3 * 0.5 - 0.6 * 0.5) < 0: no edge, no bet.
        assert_eq!(result.skipped.sizing, 1);
    }
}

//! The request-weight budget: a fixed-window token bucket keyed on request weight, aligned to the
//! exchange's own windows (server time), and fed by the used-weight header of every response.
//!
//! Binance-compatible exchanges count weight per IP in fixed windows (`REQUEST_WEIGHT`, e.g. 2400
//! per minute, or 400 per 10 seconds) and report the running total in `X-MBX-USED-WEIGHT-<n><u>`.
//! A request may start only when the weight already used in the current window plus its own stays
//! within the budget; the header corrects the local count upward (other clients on the same IP,
//! requests the server counted in a later window than we did). After a 429 nobody sends until the
//! exchange's `Retry-After` (or, without one, the next window) has passed.

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::util::rng::Rng;

/// Slack after a window boundary before spending the new window, for clock error.
const BOUNDARY_SLACK_MS: u64 = 25;

#[derive(Debug)]
struct State {
    window_ms: u64,
    /// Weight this client may use per window; `None` until the limits are known.
    budget: Option<u64>,
    window: u64,
    used: u64,
    /// Weight this client charged in the current window (not raised by headers).
    own: u64,
    paused_until_ms: u64,
    /// Set by a 418: nothing more is sent by this client.
    banned: Option<Option<Duration>>,
    /// 429s since the last success, across every request sharing the limiter.
    rate_limited_in_a_row: u32,
    rng: Rng,
}

/// Why a request may not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Cancelled,
    /// The exchange banned this IP (418); `Retry-After` if it said.
    Banned(Option<Duration>),
    /// The request alone weighs more than a window's budget.
    TooHeavy {
        weight: u64,
        budget: u64,
        window_ms: u64,
    },
}

/// Shared by every request to one source during a run.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
    /// `server time - local time`, in ms.
    offset_ms: std::sync::atomic::AtomicI64,
}

/// A permit's record: the window the weight was charged to.
#[derive(Debug, Clone, Copy)]
pub struct Charge {
    pub window: u64,
    pub weight: u64,
    /// How long the caller waited for budget.
    pub waited: Duration,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Limiter {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                window_ms: 60_000,
                budget: None,
                window: 0,
                used: 0,
                own: 0,
                paused_until_ms: 0,
                banned: None,
                rate_limited_in_a_row: 0,
                rng: Rng::from_entropy(),
            }),
            offset_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the window and the weight this client may spend in each.
    pub fn configure(&self, window_ms: u64, budget: u64) {
        let mut state = self.lock();
        if state.window_ms != window_ms {
            state.window = 0;
            state.used = 0;
        }
        state.window_ms = window_ms.max(1);
        state.budget = Some(budget.max(1));
    }

    pub fn budget(&self) -> Option<(u64, u64)> {
        let state = self.lock();
        state.budget.map(|budget| (state.window_ms, budget))
    }

    pub fn set_clock_offset(&self, offset_ms: i64) {
        self.offset_ms
            .store(offset_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The exchange's clock, as best known.
    pub fn server_now_ms(&self) -> u64 {
        let offset = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        (crate::util::time::now_ms() as i64 + offset).max(0) as u64
    }

    /// Waits until `weight` fits in the current window's budget and no 429 back-off is active,
    /// then charges it.
    pub async fn acquire(
        &self,
        weight: u64,
        cancel: &CancellationToken,
    ) -> Result<Charge, Refusal> {
        let mut waited = Duration::ZERO;
        loop {
            let wait = {
                let mut state = self.lock();
                if let Some(retry_after) = state.banned {
                    return Err(Refusal::Banned(retry_after));
                }
                if let Some(budget) = state.budget
                    && weight > budget
                {
                    return Err(Refusal::TooHeavy {
                        weight,
                        budget,
                        window_ms: state.window_ms,
                    });
                }
                let now = self.server_now_ms();
                if now < state.paused_until_ms {
                    Some(state.paused_until_ms - now)
                } else {
                    let window = now / state.window_ms;
                    if window != state.window {
                        state.window = window;
                        state.used = 0;
                        state.own = 0;
                    }
                    let into_window = now - window * state.window_ms;
                    let fits = match state.budget {
                        None => true,
                        Some(budget) => state.used + weight <= budget,
                    };
                    if fits
                        && (into_window >= BOUNDARY_SLACK_MS
                            || state.used > 0
                            || state.budget.is_none())
                    {
                        state.used += weight;
                        state.own += weight;
                        return Ok(Charge {
                            window,
                            weight,
                            waited,
                        });
                    }
                    if fits {
                        Some(BOUNDARY_SLACK_MS - into_window)
                    } else {
                        // Spread the wake-ups a little so a window does not open with a stampede.
                        let jitter = (state.rng.uniform() * 20.0) as u64;
                        Some((window + 1) * state.window_ms - now + BOUNDARY_SLACK_MS + jitter)
                    }
                }
            };
            if let Some(ms) = wait {
                let pause = Duration::from_millis(ms.max(1));
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Refusal::Cancelled),
                    _ = tokio::time::sleep(pause) => waited += pause,
                }
            }
        }
    }

    /// The weight this client charged in the current window, and the window's length.
    pub fn own_in_window(&self) -> (u64, u64) {
        let state = self.lock();
        let current = self.server_now_ms() / state.window_ms;
        (
            if current == state.window {
                state.own
            } else {
                0
            },
            state.window_ms,
        )
    }

    /// Feeds back the used-weight header of a response to a request charged in `charge.window`.
    pub fn observe(&self, charge: &Charge, used: u64) {
        let mut state = self.lock();
        let now_window = self.server_now_ms() / state.window_ms;
        // The header speaks for the window the server counted the request in. Trust it only
        // when the request was sent and answered within our current window: a response that
        // straddles a boundary reports the old window's total, not the new one's.
        if now_window == state.window && charge.window == state.window {
            state.used = state.used.max(used);
        }
    }

    /// A successful response: the run of 429s is over.
    pub fn succeeded(&self) {
        self.lock().rate_limited_in_a_row = 0;
    }

    /// After a 418: refuse every later request.
    pub fn ban(&self, retry_after: Option<Duration>) {
        self.lock().banned = Some(retry_after);
    }

    /// After a 429: nobody sends before `retry_after`, or the next window plus jitter.
    /// Returns the wait and how many 429s have come in a row.
    pub fn back_off(&self, retry_after: Option<Duration>) -> (Duration, u32) {
        let mut state = self.lock();
        state.rate_limited_in_a_row += 1;
        let now = self.server_now_ms();
        let until = match retry_after {
            Some(wait) => now + wait.as_millis() as u64 + BOUNDARY_SLACK_MS,
            None => {
                let next = (now / state.window_ms + 1) * state.window_ms;
                next + BOUNDARY_SLACK_MS + (state.rng.uniform() * 250.0) as u64
            }
        };
        state.paused_until_ms = state.paused_until_ms.max(until);
        (
            Duration::from_millis(state.paused_until_ms.saturating_sub(now)),
            state.rate_limited_in_a_row,
        )
    }

    /// A jittered exponential back-off for attempt `attempt` (0-based): full jitter, capped.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let mut state = self.lock();
        let cap = 200u64.saturating_mul(1 << attempt.min(6)).min(10_000);
        Duration::from_millis(cap / 2 + (state.rng.uniform() * (cap / 2) as f64) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn charges_within_budget_and_waits_for_the_next_window() {
        let limiter = Limiter::new();
        limiter.configure(200, 10);
        let cancel = CancellationToken::new();
        let first = limiter.acquire(6, &cancel).await.unwrap();
        let second = limiter.acquire(4, &cancel).await.unwrap();
        assert_eq!(first.window, second.window);
        let third = limiter.acquire(4, &cancel).await.unwrap();
        assert!(
            third.window > first.window,
            "the budget was spent: next window"
        );
        // A header reporting more use than we counted wins.
        limiter.observe(&third, 10);
        let fourth = limiter.acquire(1, &cancel).await.unwrap();
        assert!(fourth.window > third.window);
    }

    #[tokio::test]
    async fn back_off_blocks_everyone() {
        let limiter = Limiter::new();
        limiter.configure(60_000, 1000);
        let (wait, in_a_row) = limiter.back_off(Some(Duration::from_millis(150)));
        assert_eq!(in_a_row, 1);
        assert!(wait >= Duration::from_millis(150));
        let started = std::time::Instant::now();
        limiter.acquire(1, &CancellationToken::new()).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn a_ban_or_an_impossible_weight_refuses_at_once() {
        let limiter = Limiter::new();
        limiter.configure(10_000, 30);
        let cancel = CancellationToken::new();
        assert!(matches!(
            limiter.acquire(40, &cancel).await,
            Err(Refusal::TooHeavy {
                weight: 40,
                budget: 30,
                ..
            })
        ));
        limiter.ban(Some(Duration::from_secs(120)));
        assert_eq!(
            limiter.acquire(1, &cancel).await.unwrap_err(),
            Refusal::Banned(Some(Duration::from_secs(120)))
        );
    }
}

//! Waiting with deadlines (tests never sleep for a fixed time).

use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// Polls `cond` (every 5 ms at first, backing off to 100 ms) until it is true or `timeout`
/// passes. Returns how long it took; the error names `what`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration> {
    wait_for(timeout, what, || cond().then_some(())).map(|((), d)| d)
}

/// Polls `f` until it returns `Some`, like [`wait_until`]; returns the value and the time taken.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<(T, Duration)> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return Ok((v, start.elapsed()));
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                after: timeout,
            });
        }
        thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

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

/// Checks that `cond` stays true for the whole of `window` (polled like [`wait_until`]), e.g.
/// that a path which came back does not flap; the error names `what` and when it broke.
pub fn holds_for(window: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    match wait_until(window, what, || !cond()) {
        Ok(after) => Err(LabError::NotHeld {
            what: what.to_owned(),
            after,
        }),
        Err(LabError::Timeout { .. }) => Ok(()),
        Err(e) => Err(e),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_for_passes_a_steady_condition_and_names_a_broken_one() {
        assert!(holds_for(Duration::from_millis(50), "steady", || true).is_ok());
        let mut calls = 0;
        let err = holds_for(Duration::from_secs(5), "flapping", || {
            calls += 1;
            calls < 3
        })
        .unwrap_err();
        assert!(
            matches!(err, LabError::NotHeld { ref what, .. } if what == "flapping"),
            "{err}"
        );
    }
}

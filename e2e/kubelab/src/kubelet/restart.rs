//! When to restart an exited container, and after how long.

use std::time::Duration;

/// First back-off delay.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest back-off delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A container that ran this long starts over at [`INITIAL_BACKOFF`].
pub const RESET_AFTER: Duration = Duration::from_secs(10);

/// A pod's `restartPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// From the API field (`Always` when unset or unknown, the API default).
    pub fn from_spec(s: Option<&str>) -> Self {
        match s {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }

    /// Whether a container that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// The delay before the next start: doubling from [`INITIAL_BACKOFF`] up to [`MAX_BACKOFF`],
/// back to the start once a run lasted [`RESET_AFTER`].
pub fn next_delay(previous: Option<Duration>, ran_for: Duration) -> Duration {
    match previous {
        Some(prev) if ran_for < RESET_AFTER => (prev * 2).min(MAX_BACKOFF),
        _ => INITIAL_BACKOFF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let ms = Duration::from_millis;
        let cases = [
            (None, ms(10), ms(500)),
            (Some(ms(500)), ms(10), ms(1000)),
            (Some(ms(4000)), ms(10), ms(8000)),
            (Some(ms(8000)), ms(10), ms(10_000)),
            (Some(ms(10_000)), ms(9_999), ms(10_000)),
            (Some(ms(10_000)), ms(10_000), ms(500)),
            (None, ms(60_000), ms(500)),
        ];
        for (prev, ran, want) in cases {
            assert_eq!(next_delay(prev, ran), want, "{prev:?} {ran:?}");
        }
    }

    #[test]
    fn policies() {
        use RestartPolicy::*;
        let cases = [
            (None, 0, true),
            (Some("Always"), 0, true),
            (Some("Always"), 1, true),
            (Some("OnFailure"), 0, false),
            (Some("OnFailure"), 137, true),
            (Some("Never"), 1, false),
            (Some("bogus"), 0, true),
        ];
        for (spec, code, want) in cases {
            assert_eq!(
                RestartPolicy::from_spec(spec).restarts(code),
                want,
                "{spec:?} {code}"
            );
        }
        assert_eq!(RestartPolicy::from_spec(Some("Never")), Never);
        assert_eq!(RestartPolicy::from_spec(None), Always);
        let _ = OnFailure;
    }
}

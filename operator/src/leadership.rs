//! Whether this replica may write: it won the Lease *and* the Lease, as last read, is still its
//! own and not expired by the renewal it wrote (pure, but for the lock).
//!
//! Why not the Lease campaign's flag alone ([`crate::lease`]): it sees another holder only at
//! its next renewal, and kube-lease-manager, used before it, kept reporting leadership while
//! its renewal failed (the API server away), retrying on a backoff that grew to tens of
//! seconds: in the fault suite, after the API server's 60 s outage, the old leader still
//! believed it led 29 s after the other replica had taken the expired Lease: two writers. The Lease is re-read every
//! [`check_interval`] (one GET), and writes stop once the Lease this replica last saw as its own
//! would have expired, or as soon as a read shows another holder.
//!
//! The campaign renews `grace` before expiry, so a healthy leader's last seen renewal is
//! at most `duration - grace + interval` old; with an interval of grace/3 and a margin of
//! grace/4 that stays inside `duration - margin` with grace/2 to spare for the requests, at
//! any Lease duration (the tests run 2 s Leases).

use std::sync::Mutex;
use std::time::Duration;

/// How often the Lease is re-read while this replica leads: a third of the renewal grace
/// (1.7 s with the default 15 s Lease and 5 s grace).
pub fn check_interval(grace: Duration) -> Duration {
    (grace / 3).max(Duration::from_millis(100))
}

/// Writes stop this long before the Lease this replica last saw would expire (a quarter of the
/// grace): the other replica takes it only after expiry, by its own clock.
pub fn safety_margin(grace: Duration) -> Duration {
    grace / 4
}

/// How long a renewal keeps this replica writing, in milliseconds: the Lease duration less
/// the [`safety_margin`].
pub fn valid_ms(duration: Duration, grace: Duration) -> i64 {
    i64::try_from(duration.saturating_sub(safety_margin(grace)).as_millis()).unwrap_or(i64::MAX)
}

/// This replica's clock, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

/// One read of the Lease. Times are milliseconds since the Unix epoch; `renewed` is the
/// Lease's `renewTime`, which its holder writes by its own clock (for our own renewals, ours).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSeen {
    /// When the read was sent (this replica's clock).
    pub read_at_ms: i64,
    pub holder: Option<String>,
    pub renewed_ms: Option<i64>,
}

/// The decision: `elected_at_ms` is when the campaign reported the Lease won (`None`: not
/// elected); `seen` the latest read sent after that. Until such a read, the acquisition itself
/// is the renewal (it wrote `renewTime` just before reporting).
pub fn may_write(
    elected_at_ms: Option<i64>,
    seen: Option<&LeaseSeen>,
    me: &str,
    (duration, grace): (Duration, Duration),
    now_ms: i64,
) -> bool {
    let Some(elected_at) = elected_at_ms else {
        return false;
    };
    let valid_ms = valid_ms(duration, grace);
    match seen.filter(|s| s.read_at_ms >= elected_at) {
        None => now_ms < elected_at.saturating_add(valid_ms),
        Some(s) => {
            s.holder.as_deref() == Some(me)
                && s.renewed_ms
                    .is_some_and(|r| now_ms < r.saturating_add(valid_ms))
        }
    }
}

#[derive(Debug, Default)]
struct State {
    elected_at_ms: Option<i64>,
    seen: Option<LeaseSeen>,
}

/// This replica's leadership, shared by the Lease campaign (writer) and every write (reader).
#[derive(Debug)]
pub struct Leadership {
    identity: String,
    duration: Duration,
    grace: Duration,
    state: Mutex<State>,
}

impl Leadership {
    /// `duration` and `grace` as given to the campaign.
    pub fn new(identity: impl Into<String>, duration: Duration, grace: Duration) -> Self {
        Leadership {
            identity: identity.into(),
            duration,
            grace,
            state: Mutex::new(State::default()),
        }
    }

    /// [`check_interval`] for this Lease.
    pub fn check_interval(&self) -> Duration {
        check_interval(self.grace)
    }

    /// The campaign reported the Lease won (`true`) or lost.
    pub fn set_elected(&self, elected: bool, now_ms: i64) {
        let mut st = self.lock();
        st.elected_at_ms = elected.then_some(now_ms);
        st.seen = None;
    }

    pub fn is_elected(&self) -> bool {
        self.lock().elected_at_ms.is_some()
    }

    /// A read of the Lease (sent at `seen.read_at_ms`).
    pub fn observe(&self, seen: LeaseSeen) {
        let mut st = self.lock();
        let newer = st
            .seen
            .as_ref()
            .is_none_or(|s| seen.read_at_ms >= s.read_at_ms);
        if newer {
            st.seen = Some(seen);
        }
    }

    /// Whether a write may be sent now.
    pub fn may_write(&self, now_ms: i64) -> bool {
        let st = self.lock();
        may_write(
            st.elected_at_ms,
            st.seen.as_ref(),
            &self.identity,
            (self.duration, self.grace),
            now_ms,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written (plain stores).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 15 s Lease with a 4 s grace: a 1 s margin.
    const D: (Duration, Duration) = (Duration::from_secs(15), Duration::from_secs(4));

    fn seen(read_at_ms: i64, holder: &str, renewed_ms: i64) -> LeaseSeen {
        LeaseSeen {
            read_at_ms,
            holder: Some(holder.into()),
            renewed_ms: Some(renewed_ms),
        }
    }

    #[test]
    fn writes_need_the_election_and_a_lease_that_is_ours_and_current() {
        let mine = seen(11_000, "me", 10_000);
        let theirs = seen(11_000, "other", 10_500);
        let before_gain = seen(9_000, "other", 8_000);
        let no_renewal = LeaseSeen {
            renewed_ms: None,
            ..mine.clone()
        };
        // (case, elected at, seen, now) -> may write
        for (case, elected, read, now, want) in [
            ("not elected", None, Some(&mine), 11_000, false),
            (
                "just elected, nothing read yet",
                Some(10_000),
                None,
                10_100,
                true,
            ),
            (
                "elected, no read for the whole lease",
                Some(10_000),
                None,
                24_000,
                false,
            ),
            (
                "elected, no read, just inside the margin",
                Some(10_000),
                None,
                23_999,
                true,
            ),
            (
                "our renewal, current",
                Some(10_000),
                Some(&mine),
                20_000,
                true,
            ),
            (
                "our renewal, expired but for the margin",
                Some(10_000),
                Some(&mine),
                24_000,
                false,
            ),
            ("another holder", Some(10_000), Some(&theirs), 11_000, false),
            (
                "a read from before the election is ignored",
                Some(10_000),
                Some(&before_gain),
                11_000,
                true,
            ),
            (
                "ours without a renewTime",
                Some(10_000),
                Some(&no_renewal),
                11_000,
                false,
            ),
        ] {
            assert_eq!(may_write(elected, read, "me", D, now), want, "{case}");
        }
    }

    #[test]
    fn a_healthy_leader_is_never_refused_at_any_lease_duration() {
        // Renewals every duration - grace, reads every interval, each read's answer a quarter
        // of the grace old: the last seen renewal never outlives the validity.
        for secs in [2u64, 5, 15, 60] {
            let duration = Duration::from_secs(secs);
            let grace = Duration::from_secs(crate::leader::grace_for(secs));
            let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap();
            let (renew_every, read_every) = (ms(duration - grace), ms(check_interval(grace)));
            let latency = ms(grace / 4);
            for now in (0..ms(duration) * 4).step_by(50) {
                let read_sent = (now - latency).max(0) / read_every * read_every;
                let read = LeaseSeen {
                    read_at_ms: read_sent,
                    holder: Some("me".into()),
                    renewed_ms: Some(read_sent / renew_every * renew_every),
                };
                assert!(
                    may_write(Some(0), Some(&read), "me", (duration, grace), now),
                    "{secs} s Lease refused at {now} ms"
                );
            }
        }
    }

    #[test]
    fn the_shared_state_follows_election_and_reads() {
        let l = Leadership::new("me", D.0, D.1);
        assert!(!l.may_write(0));
        l.set_elected(true, 10_000);
        assert!(l.is_elected() && l.may_write(10_500));
        // A renewal seen keeps it going past the acquisition's own window.
        l.observe(seen(20_000, "me", 19_500));
        assert!(l.may_write(30_000));
        // An older read arriving late does not replace a newer one.
        l.observe(seen(15_000, "other", 14_000));
        assert!(l.may_write(30_000));
        l.observe(seen(31_000, "other", 30_800));
        assert!(!l.may_write(31_100), "another replica holds it");
        l.set_elected(false, 32_000);
        assert!(!l.is_elected() && !l.may_write(32_000));
    }
}

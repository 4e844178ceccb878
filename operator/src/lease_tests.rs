use super::*;

/// A 15 s Lease renewed 5 s before expiry; standbys re-read every 1.666 s.
const T: LeaseTiming = LeaseTiming {
    duration: Duration::from_secs(15),
    grace: Duration::from_secs(5),
};

fn view(holder: Option<&str>, renewed_ms: Option<i64>, duration_s: Option<i32>) -> Seen {
    Seen::Present(LeaseView {
        holder: holder.map(str::to_owned),
        renewed_ms,
        duration_s,
    })
}

#[test]
fn the_next_request_follows_from_what_was_read() {
    let retry = T.retry();
    // (case, seen, now) -> step; "me" is this replica, renewals at t=100_000 ms.
    let cases = [
        (
            "nothing read yet: create at once",
            Seen::Unknown,
            0,
            Step::Create,
        ),
        ("no Lease", Seen::Absent, 0, Step::Create),
        (
            "released (no holder)",
            view(None, None, None),
            100_000,
            Step::Take,
        ),
        (
            "a holder without a renewTime",
            view(Some("other"), None, Some(15)),
            100_000,
            Step::Take,
        ),
        (
            "ours, renewed just now: wait until 5 s before expiry",
            view(Some("me"), Some(100_000), Some(15)),
            100_000,
            Step::Wait(Duration::from_secs(10)),
        ),
        (
            "ours, renewal due",
            view(Some("me"), Some(100_000), Some(15)),
            110_000,
            Step::Renew,
        ),
        (
            "ours, long expired (the API server was away): renew",
            view(Some("me"), Some(100_000), Some(15)),
            200_000,
            Step::Renew,
        ),
        (
            "another holder, valid for 14 s: re-read at the retry interval",
            view(Some("other"), Some(100_000), Some(15)),
            101_000,
            Step::Wait(retry),
        ),
        (
            "another holder, 300 ms left: re-read when it expires",
            view(Some("other"), Some(100_000), Some(15)),
            114_700,
            Step::Wait(Duration::from_millis(300)),
        ),
        (
            "another holder, expired by its own duration",
            view(Some("other"), Some(100_000), Some(15)),
            115_000,
            Step::Take,
        ),
        (
            "another holder with a longer duration than ours is still valid",
            view(Some("other"), Some(100_000), Some(60)),
            130_000,
            Step::Wait(retry),
        ),
        (
            "another holder without a duration: ours applies",
            view(Some("other"), Some(100_000), None),
            115_001,
            Step::Take,
        ),
    ];
    for (case, seen, now, want) in cases {
        assert_eq!(decide(&seen, "me", T, now), want, "{case}");
    }
}

#[test]
fn leadership_ends_a_safety_margin_before_our_lease_would_expire() {
    // 15 s less a quarter of the 5 s grace.
    for (now, want) in [
        (100_000, true),
        (113_749, true),
        (113_750, false),
        (200_000, false),
    ] {
        assert_eq!(still_held(100_000, T, now), want, "now {now}");
    }
    // A healthy leader renews at 10 s, well inside.
    assert!(still_held(100_000, T, 110_000 + 1_000));
}

fn lease(holder: Option<&str>, transitions: Option<i32>) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("wirekube-operator".into()),
            resource_version: Some("42".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_transitions: transitions,
            acquire_time: Some(MicroTime(
                k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
            )),
            ..LeaseSpec::default()
        }),
    }
}

#[test]
fn the_written_lease_keeps_the_read_version_and_counts_transitions() {
    let now = 1_700_000_000_123;
    // (case, base) -> transitions, acquire time reset
    let cases = [
        ("created", None, 0, true),
        (
            "taken from another holder",
            Some(lease(Some("other"), Some(3))),
            4,
            true,
        ),
        ("taken after a release", Some(lease(None, Some(3))), 3, true),
        (
            "an empty holder is a release",
            Some(lease(Some(""), Some(3))),
            3,
            true,
        ),
        ("renewed", Some(lease(Some("me"), Some(3))), 3, false),
    ];
    for (case, base, transitions, acquired_now) in cases {
        let l = held(base.as_ref(), "wirekube-operator", "me", T, now);
        let spec = l.spec.clone().unwrap();
        assert_eq!(
            l.metadata.name.as_deref(),
            Some("wirekube-operator"),
            "{case}"
        );
        assert_eq!(
            l.metadata.resource_version.is_some(),
            base.is_some(),
            "{case}: the replace is conditional on the version read"
        );
        assert_eq!(spec.holder_identity.as_deref(), Some("me"), "{case}");
        assert_eq!(spec.lease_duration_seconds, Some(15), "{case}");
        assert_eq!(spec.lease_transitions, Some(transitions), "{case}");
        let renewed = spec.renew_time.unwrap().0.as_millisecond();
        assert_eq!(renewed, now, "{case}");
        let acquired = spec.acquire_time.unwrap().0.as_millisecond();
        assert_eq!(acquired == now, acquired_now, "{case}");
        // What was written decides as ours, renewal not yet due.
        assert_eq!(
            decide(&Seen::Present(LeaseView::of(&l)), "me", T, now),
            Step::Wait(Duration::from_secs(10)),
            "{case}"
        );
    }
}

#[test]
fn an_empty_holder_reads_as_none() {
    assert_eq!(LeaseView::of(&lease(Some(""), None)).holder, None);
    assert_eq!(
        LeaseView::of(&lease(Some("a"), None)).holder.as_deref(),
        Some("a")
    );
    assert_eq!(LeaseView::of(&Lease::default()), LeaseView::default());
}

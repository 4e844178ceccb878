//! Start-up per pair: the lab starts the agents' pods over several seconds (a kubelet, a
//! kube-proxy and an agent per node on two cores), so "every pair converged N s after the
//! kubelets started" mixes the lab's pod start with the agents' own work. This module counts
//! each pair from the later of its two agents' start (the first line of the agent's log, which
//! carries a UTC timestamp) to the moment both directions last became as the seed expects.
//! A report counts from when the scenario's watch received it (`PeerWatch::received_at`):
//! stamped instead when the 100 ms poll loop of a debug-build harness got round to it, a
//! report on a saturated machine looked up to 2 s late (the scenario prints both).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;

/// When every direction last became as expected (a direction that regresses is forgotten),
/// and what each direction reported, change by change (to explain a slow pair).
#[derive(Debug, Default)]
pub struct Reached {
    at: BTreeMap<(String, String), Timestamp>,
    reports: BTreeMap<(String, String), Vec<(Timestamp, String)>>,
}

impl Reached {
    /// Records whether direction `from -> to` is as expected at `now`.
    pub fn observe(&mut self, from: &str, to: &str, ok: bool, now: Timestamp) {
        let key = (from.to_string(), to.to_string());
        if ok {
            self.at.entry(key).or_insert(now);
        } else {
            self.at.remove(&key);
        }
    }

    pub fn get(&self, from: &str, to: &str) -> Option<Timestamp> {
        self.at.get(&(from.to_string(), to.to_string())).copied()
    }

    /// Records what direction `from -> to` reports at `now`, when it differs from before.
    pub fn report(&mut self, from: &str, to: &str, what: String, now: Timestamp) {
        let list = self
            .reports
            .entry((from.to_string(), to.to_string()))
            .or_default();
        if list.last().is_none_or(|(_, last)| *last != what) {
            list.push((now, what));
        }
    }

    /// What direction `from -> to` reported, change by change, in seconds after `since`.
    pub fn reports_after(&self, from: &str, to: &str, since: Timestamp) -> String {
        let Some(list) = self.reports.get(&(from.to_string(), to.to_string())) else {
            return "nothing".into();
        };
        list.iter()
            .map(|(at, what)| {
                let secs = at.duration_since(since).as_secs_f64();
                format!("{secs:.2} s {what}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The slowest pair, counted from the later of its two agents' start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlowestPair {
    pub a: String,
    pub b: String,
    pub took: Duration,
}

/// The pair that took longest from the later of its agents' start until both directions were
/// as expected; `None` when a start or a direction is missing (nothing is guessed).
pub fn slowest_pair(
    pairs: &[(String, String)],
    starts: &BTreeMap<String, Timestamp>,
    reached: &Reached,
) -> Option<SlowestPair> {
    let mut worst: Option<SlowestPair> = None;
    for (a, b) in pairs {
        let started = (*starts.get(a)?).max(*starts.get(b)?);
        let done = reached.get(a, b)?.max(reached.get(b, a)?);
        let took = Duration::try_from(done.duration_since(started)).unwrap_or_default();
        if worst.as_ref().is_none_or(|w| took > w.took) {
            worst = Some(SlowestPair {
                a: a.clone(),
                b: b.clone(),
                took,
            });
        }
    }
    worst
}

/// Every direction's reports, one line each (`a b | 1.20 s Connecting cone-cone, ...`), in
/// seconds after the later of the pair's agents started: the scenario writes it to the file
/// named by `WIREKUBE_STARTUP_HISTORY`, to study a run's tail beyond its slowest pair.
pub fn history(
    pairs: &[(String, String)],
    starts: &BTreeMap<String, Timestamp>,
    reached: &Reached,
) -> String {
    let mut text = String::new();
    for (a, b) in pairs {
        let (Some(sa), Some(sb)) = (starts.get(a), starts.get(b)) else {
            continue;
        };
        let since = (*sa).max(*sb);
        for (x, y) in [(a, b), (b, a)] {
            text += &format!("{x} {y} | {}\n", reached.reports_after(x, y, since));
        }
    }
    text
}

/// First and last agent start.
pub fn spread(starts: &BTreeMap<String, Timestamp>) -> Option<(Timestamp, Timestamp)> {
    Some((*starts.values().min()?, *starts.values().max()?))
}

/// The time on the first line of a log written by `tracing`'s default format
/// (`2026-12-06T11:58:57.083870Z  INFO ...`).
pub fn first_line_time(log: &str) -> Option<Timestamp> {
    log.lines().next()?.split_whitespace().next()?.parse().ok()
}

/// When `node`'s agent started: its pod's log under the lab kubelet's `pods` directory.
pub fn agent_start(pods: &Path) -> Option<Timestamp> {
    let dir = std::fs::read_dir(pods)
        .ok()?
        .flatten()
        .find(|d| d.file_name().to_string_lossy().contains("_wirekube-agent-"))?;
    let log = std::fs::read_to_string(dir.path().join("agent.log")).ok()?;
    first_line_time(&log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_pair_counts_from_its_later_agent_to_its_later_direction() {
        let starts = BTreeMap::from([
            ("a".into(), ts(0)),
            ("b".into(), ts(4)),
            ("c".into(), ts(9)),
        ]);
        let mut r = Reached::default();
        // (from, to, reached at): a-b done at 10 (6 s after b started), a-c at 12 (3 s
        // after c), b-c at 19 (10 s after c).
        for (f, t, at) in [
            ("a", "b", 7),
            ("b", "a", 10),
            ("a", "c", 12),
            ("c", "a", 11),
            ("b", "c", 19),
            ("c", "b", 15),
        ] {
            r.observe(f, t, true, ts(at));
        }
        let p = pairs(&[("a", "b"), ("a", "c"), ("b", "c")]);
        assert_eq!(
            slowest_pair(&p, &starts, &r),
            Some(SlowestPair {
                a: "b".into(),
                b: "c".into(),
                took: Duration::from_secs(10)
            })
        );
        assert_eq!(spread(&starts), Some((ts(0), ts(9))));
    }

    #[test]
    fn a_direction_that_regressed_counts_from_when_it_came_back() {
        let starts = BTreeMap::from([("a".into(), ts(0)), ("b".into(), ts(0))]);
        let mut r = Reached::default();
        r.observe("a", "b", true, ts(2));
        r.observe("b", "a", true, ts(3));
        r.observe("a", "b", false, ts(4));
        r.observe("a", "b", true, ts(8));
        r.observe("a", "b", true, ts(9));
        let took = slowest_pair(&pairs(&[("a", "b")]), &starts, &r).map(|p| p.took);
        assert_eq!(took, Some(Duration::from_secs(8)));
    }

    #[test]
    fn reports_are_kept_change_by_change() {
        let mut r = Reached::default();
        r.report("a", "b", "Connecting".into(), ts(1));
        r.report("a", "b", "Connecting".into(), ts(2));
        r.report("a", "b", "Direct".into(), ts(3));
        assert_eq!(
            r.reports_after("a", "b", ts(0)),
            "1.00 s Connecting, 3.00 s Direct"
        );
        assert_eq!(r.reports_after("b", "a", ts(0)), "nothing");
        let starts = BTreeMap::from([("a".into(), ts(0)), ("b".into(), ts(2))]);
        assert_eq!(
            history(&pairs(&[("a", "b"), ("a", "x")]), &starts, &r),
            "a b | -1.00 s Connecting, 1.00 s Direct\nb a | nothing\n"
        );
    }

    #[test]
    fn a_missing_start_or_direction_gives_no_figure() {
        let starts = BTreeMap::from([("a".into(), ts(0))]);
        let mut r = Reached::default();
        r.observe("a", "b", true, ts(2));
        r.observe("b", "a", true, ts(3));
        assert_eq!(slowest_pair(&pairs(&[("a", "b")]), &starts, &r), None);
        let starts = BTreeMap::from([("a".into(), ts(0)), ("b".into(), ts(0))]);
        r.observe("b", "a", false, ts(4));
        assert_eq!(slowest_pair(&pairs(&[("a", "b")]), &starts, &r), None);
    }

    #[test]
    fn the_first_log_line_gives_the_start() {
        let log = "2026-12-06T11:58:57.083870Z  INFO wirekube_agent: identity ready\nlater";
        assert_eq!(
            first_line_time(log).map(|t| t.to_string()),
            Some("2026-12-06T11:58:57.08387Z".to_string())
        );
        assert_eq!(first_line_time("garbage line"), None);
        assert_eq!(first_line_time(""), None);
    }
}

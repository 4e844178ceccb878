//! Prometheus metrics of the relay.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::stun::StunIgnore;

type Labels = Vec<(&'static str, &'static str)>;

/// Every `reason` label a refused handshake can carry (see `conn.rs` and `server.rs`).
pub const AUTH_FAILURE_REASONS: &[&str] = &[
    "bad_token",
    "bad_proof",
    "replay",
    "version",
    "protocol",
    "malformed",
    "rate_limited",
    "timeout",
    "server_full",
    "source_limit",
    "evicted",
    "hello_timeout",
    "shutdown",
    "closed",
    "io",
];

/// All relay metrics. Cheap to update from any task (atomics only).
pub struct Metrics {
    registry: Registry,
    /// Authenticated connections currently registered.
    pub connections: Gauge,
    /// TCP connections accepted (before auth).
    pub accepted: Counter,
    /// Handshakes refused, by reason.
    pub auth_failures: Family<Labels, Counter>,
    /// Successful authentications.
    pub auth_ok: Counter,
    /// Data frames written to their destination.
    pub forwarded_frames: Counter,
    /// Payload bytes written to their destination.
    pub forwarded_bytes: Counter,
    /// Data frames dropped, by reason.
    pub drops: Family<Labels, Counter>,
    /// Frames waiting in all per-connection send queues.
    pub queue_depth: Gauge,
    /// Bytes charged to all send queues (queued or being written); bounded by the
    /// relay-wide queue budget plus 16 KiB per authenticated connection.
    pub queued_bytes: Gauge,
    /// Authenticated connections that ended, by reason.
    pub disconnects: Family<Labels, Counter>,
    /// Hot-path handles into `drops`, resolved once so dropping costs one atomic add.
    pub(crate) drop_queue_full: Counter,
    pub(crate) drop_unknown: Counter,
    pub(crate) drop_budget: Counter,
    /// STUN Binding requests answered, by which address changed.
    pub stun_requests: Family<Labels, Counter>,
    /// UDP datagrams on the STUN ports that were not answered, by reason.
    pub stun_ignored: Family<Labels, Counter>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wirekube_relay");
        let m = Self {
            connections: Gauge::default(),
            accepted: Counter::default(),
            auth_failures: Family::default(),
            auth_ok: Counter::default(),
            forwarded_frames: Counter::default(),
            forwarded_bytes: Counter::default(),
            drops: Family::default(),
            queue_depth: Gauge::default(),
            queued_bytes: Gauge::default(),
            disconnects: Family::default(),
            drop_queue_full: Counter::default(),
            drop_unknown: Counter::default(),
            drop_budget: Counter::default(),
            stun_requests: Family::default(),
            stun_ignored: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Authenticated connections",
            m.connections.clone(),
        );
        registry.register("accepted", "TCP connections accepted", m.accepted.clone());
        registry.register(
            "auth_failures",
            "Refused handshakes by reason",
            m.auth_failures.clone(),
        );
        registry.register("auth_successes", "Successful handshakes", m.auth_ok.clone());
        registry.register(
            "forwarded_frames",
            "Data frames delivered",
            m.forwarded_frames.clone(),
        );
        registry.register(
            "forwarded_bytes",
            "Payload bytes delivered",
            m.forwarded_bytes.clone(),
        );
        registry.register("drops", "Data frames dropped by reason", m.drops.clone());
        registry.register(
            "queue_depth",
            "Frames queued for sending",
            m.queue_depth.clone(),
        );
        registry.register(
            "queued_bytes",
            "Bytes held by send queues (queued or being written)",
            m.queued_bytes.clone(),
        );
        registry.register(
            "disconnects",
            "Authenticated connections closed by reason",
            m.disconnects.clone(),
        );
        registry.register(
            "stun_requests",
            "STUN Binding requests answered",
            m.stun_requests.clone(),
        );
        registry.register(
            "stun_ignored",
            "STUN datagrams ignored",
            m.stun_ignored.clone(),
        );
        let drop_queue_full = m
            .drops
            .get_or_create(&vec![("reason", "queue_full")])
            .clone();
        let drop_unknown = m
            .drops
            .get_or_create(&vec![("reason", "unknown_destination")])
            .clone();
        let drop_budget = m
            .drops
            .get_or_create(&vec![("reason", "memory_budget")])
            .clone();
        // Dashboards and alerts (`rate(...auth_failures_total[5m]) > 0`) need the series to
        // exist before the first failure, so every reason starts at zero.
        for reason in AUTH_FAILURE_REASONS {
            let _ = m.auth_failures.get_or_create(&vec![("reason", *reason)]);
        }
        Self {
            registry,
            drop_queue_full,
            drop_unknown,
            drop_budget,
            ..m
        }
    }

    /// Counts a refused handshake.
    pub fn auth_failure(&self, reason: &'static str) {
        debug_assert!(
            AUTH_FAILURE_REASONS.contains(&reason),
            "add {reason} to AUTH_FAILURE_REASONS"
        );
        self.auth_failures
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Counts a dropped data frame.
    pub fn dropped(&self, reason: &'static str) {
        self.drops.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Counts `n` dropped data frames.
    pub fn drop_n(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.drops
                .get_or_create(&vec![("reason", reason)])
                .inc_by(n);
        }
    }

    /// Counts an ended authenticated connection.
    pub fn disconnect(&self, reason: &'static str) {
        self.disconnects
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    pub(crate) fn stun_request(&self, changed_ip: bool, changed_port: bool) {
        let change = match (changed_ip, changed_port) {
            (false, false) => "none",
            (false, true) => "port",
            (true, false) => "ip",
            (true, true) => "ip_port",
        };
        self.stun_requests
            .get_or_create(&vec![("change", change)])
            .inc();
    }

    pub(crate) fn stun_ignored(&self, why: StunIgnore) {
        let reason = match why {
            StunIgnore::Malformed => "malformed",
            StunIgnore::NotBindingRequest => "not_binding_request",
            StunIgnore::RateLimited => "rate_limited",
        };
        self.stun_ignored
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Current value of a labelled counter, for tests and the benchmark.
    pub fn count(family: &Family<Labels, Counter>, key: &'static str, value: &'static str) -> u64 {
        family.get_or_create(&vec![(key, value)]).get()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_auth_failure_reason_is_exported_at_zero() {
        let text = Metrics::new().render();
        for reason in AUTH_FAILURE_REASONS {
            let line = format!("wirekube_relay_auth_failures_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "missing {line} in:\n{text}");
        }
    }
}

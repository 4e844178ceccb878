//! Errors of the operator library (`anyhow` is used only by the binary).

use std::time::Duration;

/// Everything a reconcile or the operator runtime can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API {verb} {what}: {source}")]
    Kube {
        verb: &'static str,
        what: String,
        #[source]
        source: kube::Error,
    },
    /// An object could not be (de)serialized.
    #[error("serializing {what}: {source}")]
    Serde {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The mesh object lacks metadata the operator needs (e.g. uid).
    #[error("{0} has no {1}")]
    MissingField(String, &'static str),
    /// A watch cache did not fill in time (often missing RBAC for that resource).
    #[error("the {0} cache has not synced; check that the operator may get/list/watch them")]
    CacheNotSynced(&'static str),
    /// This replica is not (or no longer) the leader; it must not write.
    #[error("not the leader: write to {0} skipped")]
    NotLeader(String),
    /// Some peer writes of a pass failed; the others were written. `first` is one of them.
    #[error("{failed} of {attempted} peer write(s) failed ({nodes}); first: {first}")]
    PeerWrites {
        failed: usize,
        attempted: usize,
        nodes: String,
        #[source]
        first: Box<Error>,
    },
    /// Serving /metrics, /healthz, /readyz failed.
    #[error("http server on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Short stable label for the failures metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 409 => "conflict",
                kube::Error::Api(s) if s.code == 403 => "forbidden",
                kube::Error::Api(s) if s.code == 422 => "invalid",
                kube::Error::Api(_) => "api",
                _ => "transport",
            },
            Error::Serde { .. } => "serialization",
            Error::MissingField(..) => "missing-field",
            Error::CacheNotSynced(_) => "cache-not-synced",
            Error::NotLeader(_) => "not-leader",
            Error::PeerWrites { .. } => "peer-writes",
            Error::Http { .. } => "http",
        }
    }

    /// How long to wait before retrying after this error.
    pub fn retry_after(&self) -> Duration {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 409 => Duration::from_secs(1),
                _ => Duration::from_secs(5),
            },
            Error::NotLeader(_) => Duration::from_secs(30),
            Error::PeerWrites { first, .. } => first.retry_after(),
            _ => Duration::from_secs(15),
        }
    }

    pub(crate) fn kube(
        verb: &'static str,
        what: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { verb, what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        Error::Kube {
            verb: "patch",
            what: "x".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("m", "r")
                    .with_code(code)
                    .boxed(),
            ),
        }
    }

    #[test]
    fn reasons_and_backoff() {
        assert_eq!(api(409).metric_reason(), "conflict");
        assert_eq!(api(403).metric_reason(), "forbidden");
        assert_eq!(api(500).metric_reason(), "api");
        assert_eq!(api(409).retry_after(), Duration::from_secs(1));
        assert_eq!(api(500).retry_after(), Duration::from_secs(5));
        assert_eq!(Error::NotLeader("p".into()).metric_reason(), "not-leader");
    }
}

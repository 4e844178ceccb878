//! The lab kubelet's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the lab kubelet. Errors about one pod end up in that pod's
/// status (reason and message); they never stop the other pods.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// A file, process or namespace operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A command-line value is malformed.
    #[error("invalid {flag} value {value:?}: {reason}")]
    Flag {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    /// No `--image` rule maps this image to a local binary.
    #[error("image {image:?} is not mapped to a local binary (no --image rule matches it)")]
    ImageNotMapped { image: String },
    /// The mapped binary does not exist or is not executable.
    #[error("image {image:?} maps to {binary}, which is not an executable file")]
    BinaryMissing { image: String, binary: PathBuf },
    /// An environment variable of a container cannot be resolved.
    #[error("env var {name}: {reason}")]
    Env { name: String, reason: String },
    /// A volume cannot be prepared.
    #[error("volume {volume:?}: {reason}")]
    Volume { volume: String, reason: String },
    /// A CNI plugin failed or returned something unusable.
    #[error("CNI {plugin} {command}: {reason}")]
    Cni {
        plugin: String,
        command: &'static str,
        reason: String,
    },
    /// A probe is configured in a way the lab kubelet cannot run.
    #[error("probe: {0}")]
    Probe(String),
    /// The node has no usable `spec.podCIDR`.
    #[error("pod CIDR {cidr:?}: {reason}")]
    PodCidr { cidr: String, reason: String },
}

/// Result with a [`KubeletError`].
pub type Result<T, E = KubeletError> = std::result::Result<T, E>;

impl KubeletError {
    /// Wraps a kube error with what was being done.
    pub fn api(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Api {
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// The short CamelCase reason a pod or container status shows for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ImageNotMapped { .. } | Self::BinaryMissing { .. } => "ErrImagePull",
            Self::Env { .. } => "CreateContainerConfigError",
            Self::Volume { .. } => "FailedMount",
            Self::Cni { .. } | Self::PodCidr { .. } => "FailedCreatePodSandBox",
            Self::Probe(_) => "InvalidProbe",
            Self::Api { .. } | Self::Io { .. } | Self::Flag { .. } => "CreateContainerError",
        }
    }

    /// True for a kube error the API server answered with `code`.
    pub fn is_api_code(&self, code: u16) -> bool {
        matches!(self, Self::Api { source, .. } if api_code(source) == Some(code))
    }
}

/// The HTTP status of an API error response, if it is one.
pub fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

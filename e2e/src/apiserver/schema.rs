//! CRD structural-schema enforcement, as kube-apiserver does for custom resources: defaulting,
//! pruning of unknown fields, then validation (OpenAPI v3 keywords, Kubernetes extensions and
//! `x-kubernetes-validations` CEL rules).
//!
//! * [`compile`]: the schema JSON into a tree of nodes (regexes and CEL rules compiled once).
//! * [`mutate`]: defaulting and pruning.
//! * [`validate`]: keyword validation; [`rules`]: CEL rules.

mod compile;
mod mutate;
mod rules;
mod validate;

use std::fmt;

use thiserror::Error;

use self::compile::Node;
use super::cel::CelError;

/// Why a CRD's `openAPIV3Schema` could not be compiled.
#[derive(Debug, Error)]
pub enum SchemaError {
    #[error("invalid schema at {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("invalid pattern at {path}: {source}")]
    Pattern {
        path: String,
        #[source]
        source: regex::Error,
    },
    #[error("invalid x-kubernetes-validations rule at {path}: {source}")]
    Cel {
        path: String,
        #[source]
        source: CelError,
    },
}

/// The reason of one field error, as in a Kubernetes `Status` cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorReason {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    TooLong,
    TooMany,
    Forbidden,
}

impl FieldErrorReason {
    pub fn as_status_cause(&self) -> &'static str {
        match self {
            FieldErrorReason::Required => "FieldValueRequired",
            FieldErrorReason::Invalid => "FieldValueInvalid",
            FieldErrorReason::NotSupported => "FieldValueNotSupported",
            FieldErrorReason::Duplicate => "FieldValueDuplicate",
            FieldErrorReason::TooLong => "FieldValueTooLong",
            FieldErrorReason::TooMany => "FieldValueTooMany",
            FieldErrorReason::Forbidden => "FieldValueForbidden",
        }
    }
}

/// One invalid field, as a `StatusCause` of a 422 `Invalid` response.
///
/// `path` is the field (`spec.relay.external.endpoint`, `spec.stunServers[1]`, map values as
/// `spec.labels[key]`), `message` the cause's message as kube-apiserver words it, e.g.
/// `Invalid value: 70000: spec.port in body should be less than or equal to 65535` or
/// `Required value`. `Display` gives `path: message`, the line of the `Status` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: FieldErrorReason,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A compiled CRD version schema (`spec.versions[].schema.openAPIV3Schema`).
#[derive(Debug)]
pub struct CompiledSchema {
    root: Node,
}

impl CompiledSchema {
    /// Compiles the `openAPIV3Schema` of one CRD version. Malformed keywords, regexes and CEL
    /// rules (including calls to unsupported CEL functions) are errors.
    pub fn from_openapi_v3(schema: &serde_json::Value) -> Result<CompiledSchema, SchemaError> {
        Ok(CompiledSchema {
            root: Node::compile(schema, "")?,
        })
    }

    /// Admits `obj` (a whole custom resource) like kube-apiserver: applies defaults, prunes unknown
    /// fields (never `apiVersion`, `kind`, `metadata`), then validates it; `old` is the stored
    /// object on updates (enables `oldSelf` transition rules and validation ratcheting).
    /// `obj` is mutated even when validation fails.
    pub fn admit(
        &self,
        obj: &mut serde_json::Value,
        old: Option<&serde_json::Value>,
    ) -> Result<(), Vec<FieldError>> {
        mutate::apply_defaults(&self.root, obj, true);
        mutate::prune(&self.root, obj, true);
        let mut errors = Vec::new();
        validate::validate(&self.root, obj, old, "", true, &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

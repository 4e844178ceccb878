//! CRD structural-schema enforcement (pruning, defaulting, validation, CEL rules).

use thiserror::Error;

/// Why a CRD's `openAPIV3Schema` could not be compiled.
#[derive(Debug, Error)]
pub enum SchemaError {
    #[error("schema at {path}: {message}")]
    Invalid { path: String, message: String },
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

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: FieldErrorReason,
    pub message: String,
}

/// A compiled CRD version schema.
#[derive(Debug)]
pub struct CompiledSchema {}

impl CompiledSchema {
    pub fn from_openapi_v3(_schema: &serde_json::Value) -> Result<CompiledSchema, SchemaError> {
        Ok(CompiledSchema {})
    }

    pub fn admit(
        &self,
        _obj: &mut serde_json::Value,
        _old: Option<&serde_json::Value>,
    ) -> Result<(), Vec<FieldError>> {
        Ok(())
    }
}

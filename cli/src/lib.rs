//! `kubectl wirekube`: reads the mesh from the Kubernetes API and explains it.
//!
//! Everything that decides what to print is a pure function of a [`Snapshot`] (the objects
//! fetched once, plus the time they were fetched): [`status::render`], [`explain::explain`],
//! [`doctor::checks`], [`netcheck::netcheck`]. The fetch layer ([`fetch`]) and the terminal
//! layer ([`text`]) are thin, so the reports are tested from JSON fixtures without a cluster.

#![forbid(unsafe_code)]

pub mod doctor;
pub mod error;
pub mod explain;
pub mod fetch;
pub mod netcheck;
pub mod snapshot;
pub mod status;
pub mod text;

#[cfg(test)]
pub(crate) mod fixtures;

pub use error::CliError;
pub use snapshot::Snapshot;

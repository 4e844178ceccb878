//! WireKube node dataplane.

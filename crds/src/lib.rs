//! WireKube API types

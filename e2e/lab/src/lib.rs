//! Network-namespace lab.

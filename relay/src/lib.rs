//! WireKube relay server: authenticated TCP packet relay and STUN responder.
//!
//! The relay forwards already-encrypted WireGuard packets between agents that proved
//! ownership of their WireGuard keys (see `wirekube_relay_proto::auth`), and answers
//! STUN Binding requests (RFC 5389/5780) so agents can classify their NAT.

#![forbid(unsafe_code)]

mod admission;
pub mod cli;
pub mod config;
mod conn;
mod http;
pub mod metrics;
mod outbox;
mod pump;
pub mod ratelimit;
mod replay;
mod server;
mod shared;
pub mod stun;
pub mod token;

pub use config::{RelayConfig, StunConfig};
pub use metrics::Metrics;
pub use server::{Relay, RelayError};
pub use token::{TokenError, TokenSource};

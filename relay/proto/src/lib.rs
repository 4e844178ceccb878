//! WireKube relay wire protocol (sans-IO) and client

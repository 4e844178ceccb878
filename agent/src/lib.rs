//! WireKube node agent: discovery, dataplane, relay client, fallback

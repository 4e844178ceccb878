//! WireKube relay server: TCP 3478 relay and STUN responder

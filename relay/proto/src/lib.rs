//! WireKube relay wire protocol, without I/O: frames, the codec, authentication and the
//! handshake state machines.
//!
//! # Protocol
//! TCP stream of frames, `len: u32 BE | type: u8 | body` (see [`frame`]):
//!
//! 1. client → `Hello { version, key }`
//! 2. relay → `Challenge { ephemeral, nonce }` (fresh per connection)
//! 3. client → `Auth { mac, token }` (see [`auth`] for the MAC)
//! 4. relay → `AuthOk`, or `Error { code, .. }` and close
//! 5. both ways: `Data { key, payload }` (key = destination when sent by a client,
//!    source when delivered by the relay), `Ping`/`Pong`.
//!
//! The relay never sees WireGuard plaintext: payloads are already-encrypted WireGuard
//! packets.
//!
//! # Handshake
//! [`handshake`] is the handshake as two state machines without I/O ([`ServerHandshake`] for
//! the relay, [`ClientHandshake`] for the client); both sides use them, so the protocol is
//! written once. The async client with sockets and reconnects is `wirekube-relay-client`
//! (`relay/client`).

#![forbid(unsafe_code)]

pub mod auth;
pub mod codec;
pub mod flags;
pub mod frame;
pub mod handshake;
pub mod key;

pub use auth::{AuthError, ServerChallenge, client_auth, token_matches};
pub use codec::{CodecError, FrameCodec};
pub use frame::{
    DATA_KEY_OFFSET, DecodeError, EncodeError, ErrorCode, Frame, FrameHead, LEN_PREFIX,
    MAX_FRAME_LEN, MAX_PACKET_LEN, MAX_TOKEN_LEN, PROTOCOL_VERSION, peek,
};
pub use handshake::{
    Authenticated, ClientError, ClientHandshake, ClientStep, Refusal, ServerHandshake,
};
pub use key::{KeyError, PrivateKey, PublicKey};

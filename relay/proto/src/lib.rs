//! WireKube relay wire protocol (sans-IO) and the async client the agent uses.
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
//! # Client
//! ```no_run
//! # async fn demo() {
//! use wirekube_relay_proto::{PrivateKey, PublicKey, RelayClient, RelayClientConfig};
//! let key = PrivateKey::from_base64("...").unwrap();
//! let (client, mut rx) = RelayClient::start(RelayClientConfig::new("relay:3478", key, "token"));
//! let peer: PublicKey = "...".parse().unwrap();
//! let _ = client.send(peer, bytes::Bytes::from_static(b"wg packet"));
//! while let Some((src, packet)) = rx.recv().await { /* hand to WireGuard */ }
//! # }
//! ```

pub mod auth;
pub mod client;
pub mod codec;
pub mod frame;
pub mod key;

pub use auth::{AuthError, ServerChallenge, client_auth, token_matches};
pub use client::{
    ConnectionState, RelayClient, RelayClientConfig, RelayReceiver, SendError, Status,
};
pub use codec::{CodecError, FrameCodec};
pub use frame::{
    DATA_KEY_OFFSET, DecodeError, EncodeError, ErrorCode, Frame, FrameHead, LEN_PREFIX,
    MAX_FRAME_LEN, MAX_PACKET_LEN, MAX_TOKEN_LEN, PROTOCOL_VERSION, peek,
};
pub use key::{KeyError, PrivateKey, PublicKey};

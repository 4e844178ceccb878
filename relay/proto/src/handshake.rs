//! The handshake as a state machine without I/O, one per side, used by the relay
//! (`relay/src/conn.rs`) and the client (`relay/client`). The caller moves frames and keeps
//! the clock (deadlines); these types decide what each frame means:
//!
//! ```text
//! client                                relay
//!   ClientHandshake::hello()  ── Hello ──▶ ServerHandshake::hello()      → key (admit it?)
//!                            ◀─ Challenge ─ ServerHandshake::challenge()
//!   ClientHandshake::on_frame() ── Auth ──▶ ServerHandshake::auth()       → key registered
//!                             ◀── AuthOk ──  (or Error { code } and close)
//!   ClientHandshake::on_frame() → Authenticated
//! ```
//!
//! Checks the relay does around it (rate limit per source after the Hello, replay memory
//! after a bad proof) are its own policy and stay in the relay.

use crate::auth::{AuthError, ServerChallenge, client_auth};
use crate::frame::{ErrorCode, Frame, PROTOCOL_VERSION};
use crate::key::{PrivateKey, PublicKey};

/// Why the relay refuses a handshake: the code of the Error frame it sends, a stable metric
/// label ([`Refusal::reason`]) and a message (`Display`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("relay speaks version {PROTOCOL_VERSION}, client sent {0}")]
    UnsupportedVersion(u8),
    /// A valid frame out of order.
    #[error("{0}")]
    OutOfOrder(&'static str),
    #[error("mesh token rejected")]
    BadToken,
    /// The proof did not verify; `mac` lets the relay tell a replayed login from a wrong key.
    #[error("key possession proof failed")]
    BadProof { mac: [u8; 32] },
}

impl Refusal {
    /// The Error frame's code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Refusal::OutOfOrder(_) => ErrorCode::ProtocolViolation,
            Refusal::BadToken => ErrorCode::BadToken,
            Refusal::BadProof { .. } => ErrorCode::BadProof,
        }
    }

    /// Metric label of the relay's auth-failure counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::UnsupportedVersion(_) => "version",
            Refusal::OutOfOrder(_) => "protocol",
            Refusal::BadToken => "bad_token",
            Refusal::BadProof { .. } => "bad_proof",
        }
    }
}

enum ServerState {
    AwaitHello,
    /// Hello accepted; the challenge is not sent yet.
    Hello(PublicKey),
    AwaitAuth(PublicKey, ServerChallenge),
    Done,
}

/// A successful handshake: the registered key and the proof that opened it (the relay
/// remembers proofs to recognise a replayed login).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    pub key: PublicKey,
    pub mac: [u8; 32],
}

/// The relay's side of one connection's handshake. Use each once.
pub struct ServerHandshake {
    state: ServerState,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    pub fn new() -> Self {
        ServerHandshake {
            state: ServerState::AwaitHello,
        }
    }

    /// The client's first frame. `Ok`: the key it wants to register (the relay may still
    /// refuse it, e.g. by rate limit, before spending any crypto on it).
    pub fn hello(&mut self, frame: Frame) -> Result<PublicKey, Refusal> {
        let ServerState::AwaitHello = self.state else {
            self.state = ServerState::Done;
            return Err(Refusal::OutOfOrder("expected Hello"));
        };
        self.state = ServerState::Done;
        match frame {
            Frame::Hello { version, key } if version == PROTOCOL_VERSION => {
                self.state = ServerState::Hello(key);
                Ok(key)
            }
            Frame::Hello { version, .. } => Err(Refusal::UnsupportedVersion(version)),
            _ => Err(Refusal::OutOfOrder("expected Hello")),
        }
    }

    /// The Challenge to send after an accepted Hello, with a fresh ephemeral key and nonce.
    /// `None` when no Hello was accepted.
    pub fn challenge(&mut self) -> Option<Frame> {
        self.challenge_with(ServerChallenge::new())
    }

    /// [`ServerHandshake::challenge`] with a given challenge (tests).
    pub fn challenge_with(&mut self, challenge: ServerChallenge) -> Option<Frame> {
        match std::mem::replace(&mut self.state, ServerState::Done) {
            ServerState::Hello(key) => {
                let frame = challenge.frame();
                self.state = ServerState::AwaitAuth(key, challenge);
                Some(frame)
            }
            other => {
                self.state = other;
                None
            }
        }
    }

    /// The client's answer to the challenge. `token_ok` checks the mesh token (before the
    /// proof, which costs a Diffie-Hellman). `Ok`: the key is authenticated; send AuthOk.
    pub fn auth(
        &mut self,
        frame: Frame,
        token_ok: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Authenticated, Refusal> {
        let ServerState::AwaitAuth(key, challenge) =
            std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(Refusal::OutOfOrder("expected Auth"));
        };
        let (mac, token) = match frame {
            Frame::Auth { mac, token } => (mac, token),
            Frame::Data { .. } => return Err(Refusal::OutOfOrder("data before auth")),
            _ => return Err(Refusal::OutOfOrder("expected Auth")),
        };
        if !token_ok(&token) {
            return Err(Refusal::BadToken);
        }
        match challenge.verify(&key, &mac, &token) {
            Ok(()) => Ok(Authenticated { key, mac }),
            Err(AuthError::BadProof | AuthError::WeakKey) => Err(Refusal::BadProof { mac }),
        }
    }
}

/// Why a client's handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The relay sent an Error frame.
    #[error("relay refused: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// A frame the handshake does not expect now (its `Debug`).
    #[error("unexpected frame from relay: {0}")]
    Unexpected(String),
    /// The relay's ephemeral key is a low-order point.
    #[error("{0}")]
    Auth(#[from] AuthError),
}

impl ClientError {
    /// The relay's code, when it refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What the client does after a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStep {
    /// Send this frame (the Auth answering the challenge) and wait for the next.
    Send(Frame),
    /// AuthOk: the key is registered; Data may flow.
    Authenticated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    AwaitChallenge,
    AwaitAuthOk,
    Done,
}

/// The client's side of one handshake.
pub struct ClientHandshake<'a> {
    key: &'a PrivateKey,
    token: &'a [u8],
    state: ClientState,
}

impl<'a> ClientHandshake<'a> {
    /// A handshake registering `key` with the mesh `token`; send [`ClientHandshake::hello`]
    /// first.
    pub fn new(key: &'a PrivateKey, token: &'a [u8]) -> Self {
        ClientHandshake {
            key,
            token,
            state: ClientState::AwaitChallenge,
        }
    }

    /// The first frame.
    pub fn hello(&self) -> Frame {
        Frame::Hello {
            version: PROTOCOL_VERSION,
            key: self.key.public_key(),
        }
    }

    /// A frame from the relay.
    pub fn on_frame(&mut self, frame: Frame) -> Result<ClientStep, ClientError> {
        let state = std::mem::replace(&mut self.state, ClientState::Done);
        match (state, frame) {
            (_, Frame::Error { code, message }) => Err(ClientError::Refused { code, message }),
            (ClientState::AwaitChallenge, Frame::Challenge { ephemeral, nonce }) => {
                let auth = client_auth(self.key, &ephemeral, &nonce, self.token)?;
                self.state = ClientState::AwaitAuthOk;
                Ok(ClientStep::Send(auth))
            }
            (ClientState::AwaitAuthOk, Frame::AuthOk) => Ok(ClientStep::Authenticated),
            (_, other) => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;

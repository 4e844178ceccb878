//! Frame layout and sans-IO encode/decode.
//!
//! Every frame is `len: u32 BE | type: u8 | body`, where `len` counts the type byte and
//! the body. The length is validated against [`MAX_FRAME_LEN`] before any buffer is grown,
//! so a peer cannot make us allocate by announcing a huge frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::key::PublicKey;

/// Protocol version spoken by this crate, carried in [`Frame::Hello`].
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest packet a data frame may carry (the largest possible UDP payload).
pub const MAX_PACKET_LEN: usize = 65_535;
/// Largest mesh token accepted in [`Frame::Auth`].
pub const MAX_TOKEN_LEN: usize = 1024;
/// Largest error message (bytes of UTF-8) in [`Frame::Error`].
pub const MAX_ERROR_MESSAGE_LEN: usize = 512;
/// Largest value of the length prefix: type byte + destination key + packet.
pub const MAX_FRAME_LEN: usize = 1 + 32 + MAX_PACKET_LEN;
/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;

const T_HELLO: u8 = 1;
const T_CHALLENGE: u8 = 2;
const T_AUTH: u8 = 3;
const T_AUTH_OK: u8 = 4;
const T_DATA: u8 = 5;
const T_PING: u8 = 6;
const T_PONG: u8 = 7;
const T_ERROR: u8 = 8;

/// Why the relay refused or closed a connection. Unknown codes from a newer peer decode
/// as [`ErrorCode::Other`] instead of failing, so old clients still see the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The Hello carried a protocol version the relay does not speak.
    UnsupportedVersion,
    /// The mesh token did not match.
    BadToken,
    /// The key-possession proof did not verify (wrong private key or replayed auth).
    BadProof,
    /// The handshake did not finish before the deadline.
    AuthTimeout,
    /// A valid frame arrived when it is not allowed (e.g. data before auth).
    ProtocolViolation,
    /// Bytes that do not decode as a frame.
    MalformedFrame,
    /// The relay has reached its connection limit.
    ServerFull,
    /// Too many registrations from this source address.
    RateLimited,
    /// A newer authenticated connection registered the same key.
    Replaced,
    /// The relay is shutting down.
    ShuttingDown,
    /// The Auth frame is a replay of one the relay already accepted on another
    /// connection (a recorded login, not a wrong key).
    Replayed,
    /// Not fatal: the relay has no client registered for the destination of a Data
    /// frame (sent rate-limited, only when the relay is configured to). The message is
    /// the destination key in base64. The connection stays open.
    UnknownDestination,
    /// The authenticated connection sent nothing (not even a Ping) for the relay's idle
    /// timeout.
    IdleTimeout,
    /// A code this version does not know.
    Other(u8),
}

impl ErrorCode {
    /// Wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::UnsupportedVersion => 1,
            Self::BadToken => 2,
            Self::BadProof => 3,
            Self::AuthTimeout => 4,
            Self::ProtocolViolation => 5,
            Self::MalformedFrame => 6,
            Self::ServerFull => 7,
            Self::RateLimited => 8,
            Self::Replaced => 9,
            Self::ShuttingDown => 10,
            Self::Replayed => 11,
            Self::UnknownDestination => 12,
            Self::IdleTimeout => 13,
            Self::Other(c) => c,
        }
    }

    /// Parses a wire value; never fails.
    pub fn from_u8(c: u8) -> Self {
        match c {
            1 => Self::UnsupportedVersion,
            2 => Self::BadToken,
            3 => Self::BadProof,
            4 => Self::AuthTimeout,
            5 => Self::ProtocolViolation,
            6 => Self::MalformedFrame,
            7 => Self::ServerFull,
            8 => Self::RateLimited,
            9 => Self::Replaced,
            10 => Self::ShuttingDown,
            11 => Self::Replayed,
            12 => Self::UnknownDestination,
            13 => Self::IdleTimeout,
            c => Self::Other(c),
        }
    }

    /// Whether the sender closes the connection after an Error frame with this code.
    /// Only [`ErrorCode::UnknownDestination`] is a notice that leaves it open.
    pub fn is_fatal(self) -> bool {
        !matches!(self, Self::UnknownDestination)
    }
}

/// Offset of the key inside an encoded Data frame (after the length prefix and type).
pub const DATA_KEY_OFFSET: usize = LEN_PREFIX + 1;

/// What [`peek`] found at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameHead {
    /// Not a whole frame yet. `need` is the total size of the frame (length prefix
    /// included) once the prefix is known, so the caller can reserve exactly that;
    /// otherwise [`LEN_PREFIX`].
    Incomplete {
        /// Bytes the whole frame occupies.
        need: usize,
    },
    /// A complete, well-formed Data frame of `len` bytes (length prefix included). Its
    /// key is at `DATA_KEY_OFFSET..DATA_KEY_OFFSET + 32` and may be rewritten in place
    /// (destination → source) before the bytes are forwarded unchanged otherwise.
    Data {
        /// Total encoded length.
        len: usize,
    },
    /// A complete frame of another type: decode it with [`Frame::decode`].
    Other,
}

/// Looks at the frame at the front of `src` without consuming or copying it, so a
/// forwarder can move Data frames as raw bytes. Applies the same limits as
/// [`Frame::decode`]: a Data frame reported here decodes successfully.
pub fn peek(src: &[u8]) -> Result<FrameHead, DecodeError> {
    let Some(prefix) = src.get(..LEN_PREFIX) else {
        return Ok(FrameHead::Incomplete { need: LEN_PREFIX });
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    let total = LEN_PREFIX + len;
    if src.len() < total {
        return Ok(FrameHead::Incomplete { need: total });
    }
    if src[LEN_PREFIX] != T_DATA {
        return Ok(FrameHead::Other);
    }
    if len - 1 < 32 {
        return Err(DecodeError::BadLength {
            frame: "data",
            len: len - 1,
        });
    }
    Ok(FrameHead::Data { len: total })
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → relay, first frame: the protocol version and the key to register.
    Hello {
        /// Protocol version the client speaks.
        version: u8,
        /// WireGuard public key the client wants to receive traffic for.
        key: PublicKey,
    },
    /// Relay → client: a per-connection X25519 ephemeral public key and a random nonce.
    Challenge {
        /// Relay ephemeral X25519 public key.
        ephemeral: [u8; 32],
        /// Random nonce.
        nonce: [u8; 32],
    },
    /// Client → relay: proof of private-key possession and the mesh token.
    Auth {
        /// Keyed BLAKE2s MAC, see [`crate::auth`].
        mac: [u8; 32],
        /// Mesh token (at most [`MAX_TOKEN_LEN`] bytes).
        token: Bytes,
    },
    /// Relay → client: the key is registered.
    AuthOk,
    /// A WireGuard packet. Client → relay: `key` is the destination.
    /// Relay → client: `key` is the source.
    Data {
        /// Destination (outbound) or source (inbound) public key.
        key: PublicKey,
        /// Opaque packet, at most [`MAX_PACKET_LEN`] bytes.
        payload: Bytes,
    },
    /// Keepalive request; the peer answers with [`Frame::Pong`] carrying the same value.
    Ping(u64),
    /// Keepalive answer.
    Pong(u64),
    /// Sent before the sender closes the connection.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable detail (at most [`MAX_ERROR_MESSAGE_LEN`] bytes).
        message: String,
    },
}

/// A byte sequence that is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame length {len} exceeds maximum {max}")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The length prefix is zero, so there is not even a type byte.
    #[error("empty frame")]
    EmptyFrame,
    /// The type byte is not one this version knows.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The body length does not fit the frame type.
    #[error("bad body length {len} for {frame} frame")]
    BadLength {
        /// Frame type name.
        frame: &'static str,
        /// Body length received.
        len: usize,
    },
    /// An Auth frame's token exceeds [`MAX_TOKEN_LEN`].
    #[error("token of {0} bytes exceeds maximum")]
    TokenTooLong(usize),
    /// An Error frame's message exceeds [`MAX_ERROR_MESSAGE_LEN`].
    #[error("error message of {0} bytes exceeds maximum")]
    MessageTooLong(usize),
    /// An Error frame's message is not UTF-8.
    #[error("error message is not UTF-8")]
    MessageNotUtf8,
}

/// A frame that cannot be encoded because a field exceeds its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Data payload larger than [`MAX_PACKET_LEN`].
    #[error("packet of {0} bytes exceeds maximum {MAX_PACKET_LEN}")]
    PacketTooLarge(usize),
    /// Token larger than [`MAX_TOKEN_LEN`].
    #[error("token of {0} bytes exceeds maximum {MAX_TOKEN_LEN}")]
    TokenTooLong(usize),
    /// Error message larger than [`MAX_ERROR_MESSAGE_LEN`].
    #[error("error message of {0} bytes exceeds maximum {MAX_ERROR_MESSAGE_LEN}")]
    MessageTooLong(usize),
}

impl Frame {
    /// Builds an error frame, truncating the message at a char boundary to fit the limit,
    /// because an over-long diagnostic must never stop us from reporting the error.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_LEN {
            let mut cut = MAX_ERROR_MESSAGE_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Frame::Error { code, message }
    }

    fn body_len(&self) -> usize {
        match self {
            Frame::Hello { .. } => 33,
            Frame::Challenge { .. } => 64,
            Frame::Auth { token, .. } => 32 + token.len(),
            Frame::AuthOk => 0,
            Frame::Data { payload, .. } => 32 + payload.len(),
            Frame::Ping(_) | Frame::Pong(_) => 8,
            Frame::Error { message, .. } => 1 + message.len(),
        }
    }

    /// Bytes this frame occupies on the wire, including the length prefix.
    pub fn encoded_len(&self) -> usize {
        LEN_PREFIX + 1 + self.body_len()
    }

    fn check(&self) -> Result<(), EncodeError> {
        match self {
            Frame::Data { payload, .. } if payload.len() > MAX_PACKET_LEN => {
                Err(EncodeError::PacketTooLarge(payload.len()))
            }
            Frame::Auth { token, .. } if token.len() > MAX_TOKEN_LEN => {
                Err(EncodeError::TokenTooLong(token.len()))
            }
            Frame::Error { message, .. } if message.len() > MAX_ERROR_MESSAGE_LEN => {
                Err(EncodeError::MessageTooLong(message.len()))
            }
            _ => Ok(()),
        }
    }

    /// Appends the wire form of this frame to `dst`. Validates limits first, so nothing
    /// is written when an error is returned.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.check()?;
        let body = self.body_len();
        dst.reserve(LEN_PREFIX + 1 + body);
        // Cannot overflow: check() bounds every variable-length field.
        dst.put_u32((1 + body) as u32);
        match self {
            Frame::Hello { version, key } => {
                dst.put_u8(T_HELLO);
                dst.put_u8(*version);
                dst.put_slice(key.as_bytes());
            }
            Frame::Challenge { ephemeral, nonce } => {
                dst.put_u8(T_CHALLENGE);
                dst.put_slice(ephemeral);
                dst.put_slice(nonce);
            }
            Frame::Auth { mac, token } => {
                dst.put_u8(T_AUTH);
                dst.put_slice(mac);
                dst.put_slice(token);
            }
            Frame::AuthOk => dst.put_u8(T_AUTH_OK),
            Frame::Data { key, payload } => {
                dst.put_u8(T_DATA);
                dst.put_slice(key.as_bytes());
                dst.put_slice(payload);
            }
            Frame::Ping(v) => {
                dst.put_u8(T_PING);
                dst.put_u64(*v);
            }
            Frame::Pong(v) => {
                dst.put_u8(T_PONG);
                dst.put_u64(*v);
            }
            Frame::Error { code, message } => {
                dst.put_u8(T_ERROR);
                dst.put_u8(code.to_u8());
                dst.put_slice(message.as_bytes());
            }
        }
        Ok(())
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut b)?;
        Ok(b.freeze())
    }

    /// Decodes one frame from the front of `src`.
    ///
    /// Returns `Ok(None)` when more bytes are needed (nothing is consumed); on success the
    /// frame's bytes are consumed. Data payloads share `src`'s allocation (no copy).
    /// After an error the stream is unusable: framing is lost.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if src.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        if len == 0 {
            return Err(DecodeError::EmptyFrame);
        }
        if src.len() < LEN_PREFIX + len {
            // Grow only up to the validated size of this frame.
            src.reserve(LEN_PREFIX + len - src.len());
            return Ok(None);
        }
        let ty = src[LEN_PREFIX];
        // Validate before consuming so a bad frame leaves the buffer intact for diagnostics.
        let frame_bytes = &src[LEN_PREFIX + 1..LEN_PREFIX + len];
        validate(ty, frame_bytes)?;
        src.advance(LEN_PREFIX + 1);
        let mut body = src.split_to(len - 1).freeze();
        Ok(Some(parse_valid(ty, &mut body)))
    }
}

fn validate(ty: u8, body: &[u8]) -> Result<(), DecodeError> {
    let exact = |frame: &'static str, n: usize| {
        if body.len() == n {
            Ok(())
        } else {
            Err(DecodeError::BadLength {
                frame,
                len: body.len(),
            })
        }
    };
    let at_least = |frame: &'static str, n: usize| {
        if body.len() >= n {
            Ok(())
        } else {
            Err(DecodeError::BadLength {
                frame,
                len: body.len(),
            })
        }
    };
    match ty {
        T_HELLO => exact("hello", 33),
        T_CHALLENGE => exact("challenge", 64),
        T_AUTH => {
            at_least("auth", 32)?;
            let t = body.len() - 32;
            if t > MAX_TOKEN_LEN {
                return Err(DecodeError::TokenTooLong(t));
            }
            Ok(())
        }
        T_AUTH_OK => exact("auth-ok", 0),
        // The length prefix bound already caps the payload at MAX_PACKET_LEN.
        T_DATA => at_least("data", 32),
        T_PING => exact("ping", 8),
        T_PONG => exact("pong", 8),
        T_ERROR => {
            at_least("error", 1)?;
            let m = &body[1..];
            if m.len() > MAX_ERROR_MESSAGE_LEN {
                return Err(DecodeError::MessageTooLong(m.len()));
            }
            std::str::from_utf8(m).map_err(|_| DecodeError::MessageNotUtf8)?;
            Ok(())
        }
        other => Err(DecodeError::UnknownType(other)),
    }
}

fn take32(b: &mut Bytes) -> [u8; 32] {
    let mut out = [0u8; 32];
    b.copy_to_slice(&mut out);
    out
}

/// Only called after `validate` accepted `(ty, body)`, so the slicing cannot fail.
fn parse_valid(ty: u8, body: &mut Bytes) -> Frame {
    match ty {
        T_HELLO => {
            let version = body.get_u8();
            Frame::Hello {
                version,
                key: PublicKey(take32(body)),
            }
        }
        T_CHALLENGE => {
            let ephemeral = take32(body);
            Frame::Challenge {
                ephemeral,
                nonce: take32(body),
            }
        }
        T_AUTH => {
            let mac = take32(body);
            Frame::Auth {
                mac,
                token: std::mem::take(body),
            }
        }
        T_AUTH_OK => Frame::AuthOk,
        T_DATA => {
            let key = PublicKey(take32(body));
            Frame::Data {
                key,
                payload: std::mem::take(body),
            }
        }
        T_PING => Frame::Ping(body.get_u64()),
        T_PONG => Frame::Pong(body.get_u64()),
        _ => {
            let code = ErrorCode::from_u8(body.get_u8());
            let message = String::from_utf8_lossy(body).into_owned();
            Frame::Error { code, message }
        }
    }
}

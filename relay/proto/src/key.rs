//! WireGuard key types as they appear on the relay wire and in configs.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Errors from parsing a base64 WireGuard key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not valid standard base64.
    #[error("key is not valid base64")]
    Base64,
    /// The decoded key is not 32 bytes long.
    #[error("key must be 32 bytes, got {0}")]
    Length(usize),
}

fn decode_key(s: &str) -> Result<[u8; 32], KeyError> {
    let raw = STANDARD.decode(s.trim()).map_err(|_| KeyError::Base64)?;
    <[u8; 32]>::try_from(raw.as_slice()).map_err(|_| KeyError::Length(raw.len()))
}

/// A WireGuard (Curve25519) public key: the identity a client registers at the relay
/// and the address that data frames are routed by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the base64 form used by `wg` and Kubernetes objects.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_key(s).map(Self)
    }

    /// The base64 form used by `wg` and Kubernetes objects.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(b: [u8; 32]) -> Self {
        Self(b)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A WireGuard private key. The relay client needs it only to prove ownership of the
/// matching public key; it never leaves the process.
#[derive(Clone)]
pub struct PrivateKey(pub(crate) x25519_dalek::StaticSecret);

impl PrivateKey {
    /// Wraps raw key bytes (clamping happens inside X25519, as in WireGuard).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(x25519_dalek::StaticSecret::from(bytes))
    }

    /// Parses the base64 form produced by `wg genkey`.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_key(s).map(Self::from_bytes)
    }

    /// Generates a fresh random key from the OS RNG.
    pub fn generate() -> Self {
        Self(x25519_dalek::StaticSecret::random())
    }

    /// The public key that peers and the relay know this node by.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    // Never print secret material, even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<redacted>, public={})", self.public_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        let k = PrivateKey::generate().public_key();
        assert_eq!(PublicKey::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(k.to_string().parse::<PublicKey>().unwrap(), k);
    }

    #[test]
    fn bad_keys_are_typed_errors() {
        assert_eq!(PublicKey::from_base64("not base64!"), Err(KeyError::Base64));
        assert_eq!(PublicKey::from_base64("AAAA"), Err(KeyError::Length(3)));
        assert!(PrivateKey::from_base64("AAAA").is_err());
    }
}

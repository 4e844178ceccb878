//! Handshake cryptography.
//!
//! The relay sends a fresh X25519 ephemeral key `E` and a random nonce `N` per connection.
//! The client answers with
//! `MAC = BLAKE2s-256-keyed(key = X25519(client_static, E), "wirekube-relay-auth-v1" || N || client_pub || E || BLAKE2s(token))`.
//! Only the holder of the private key for `client_pub` can compute the DH result, so
//! nobody can register a key they do not own. Because `E` and `N` are new on every
//! connection, a recorded Auth frame is useless on another connection (replay fails as a
//! bad proof). Binding the token hash into the MAC ties the token to this proof.

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac256, Digest};
use subtle::ConstantTimeEq;

use crate::frame::Frame;
use crate::key::{PrivateKey, PublicKey};

const DOMAIN: &[u8] = b"wirekube-relay-auth-v1";

/// A handshake check that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The MAC does not match: wrong private key, or a replayed Auth frame.
    #[error("key possession proof did not verify")]
    BadProof,
    /// A peer offered a low-order X25519 point, which would make the shared secret
    /// predictable.
    #[error("non-contributory X25519 key")]
    WeakKey,
}

fn token_hash(token: &[u8]) -> [u8; 32] {
    Blake2s256::digest(token).into()
}

fn mac(
    shared: &[u8; 32],
    nonce: &[u8; 32],
    client: &PublicKey,
    ephemeral: &[u8; 32],
    token: &[u8],
) -> [u8; 32] {
    // Blake2sMac256 accepts any key up to 32 bytes, so this cannot fail.
    let mut m = <Blake2sMac256 as KeyInit>::new_from_slice(shared).expect("32-byte key is valid");
    Update::update(&mut m, DOMAIN);
    Update::update(&mut m, nonce);
    Update::update(&mut m, client.as_bytes());
    Update::update(&mut m, ephemeral);
    Update::update(&mut m, &token_hash(token));
    m.finalize_fixed().into()
}

/// Compares a presented token to the expected one in constant time. Both are hashed
/// first so that the comparison time does not reveal the expected token's length either.
pub fn token_matches(expected: &[u8], presented: &[u8]) -> bool {
    token_hash(expected).ct_eq(&token_hash(presented)).into()
}

/// Relay side of one handshake. Create one per connection; never reuse it.
pub struct ServerChallenge {
    secret: x25519_dalek::EphemeralSecret,
    ephemeral: [u8; 32],
    nonce: [u8; 32],
}

impl ServerChallenge {
    /// Fresh ephemeral key and nonce from the OS RNG.
    pub fn new() -> Self {
        let secret = x25519_dalek::EphemeralSecret::random();
        let ephemeral = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Self {
            secret,
            ephemeral,
            nonce: rand::random(),
        }
    }

    /// The [`Frame::Challenge`] to send to the client.
    pub fn frame(&self) -> Frame {
        Frame::Challenge {
            ephemeral: self.ephemeral,
            nonce: self.nonce,
        }
    }

    /// Verifies the client's proof for `client` (the key from its Hello). Consumes the
    /// challenge so it cannot be checked twice.
    pub fn verify(
        self,
        client: &PublicKey,
        mac_in: &[u8; 32],
        token: &[u8],
    ) -> Result<(), AuthError> {
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(client.0));
        if !shared.was_contributory() {
            return Err(AuthError::WeakKey);
        }
        let want = mac(
            shared.as_bytes(),
            &self.nonce,
            client,
            &self.ephemeral,
            token,
        );
        if bool::from(want.ct_eq(mac_in)) {
            Ok(())
        } else {
            Err(AuthError::BadProof)
        }
    }
}

impl Default for ServerChallenge {
    fn default() -> Self {
        Self::new()
    }
}

/// Client side: builds the [`Frame::Auth`] answering a challenge.
pub fn client_auth(
    key: &PrivateKey,
    ephemeral: &[u8; 32],
    nonce: &[u8; 32],
    token: &[u8],
) -> Result<Frame, AuthError> {
    let shared = key
        .0
        .diffie_hellman(&x25519_dalek::PublicKey::from(*ephemeral));
    if !shared.was_contributory() {
        return Err(AuthError::WeakKey);
    }
    let mac = mac(
        shared.as_bytes(),
        nonce,
        &key.public_key(),
        ephemeral,
        token,
    );
    Ok(Frame::Auth {
        mac,
        token: bytes::Bytes::copy_from_slice(token),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(key: &PrivateKey, ch: &ServerChallenge, token: &[u8]) -> [u8; 32] {
        match client_auth(key, &ch.ephemeral, &ch.nonce, token).unwrap() {
            Frame::Auth { mac, .. } => mac,
            _ => unreachable!(),
        }
    }

    #[test]
    fn honest_client_verifies() {
        let k = PrivateKey::generate();
        let ch = ServerChallenge::new();
        let m = answer(&k, &ch, b"tok");
        assert_eq!(ch.verify(&k.public_key(), &m, b"tok"), Ok(()));
    }

    #[test]
    fn wrong_private_key_fails() {
        let owner = PrivateKey::generate();
        let thief = PrivateKey::generate();
        let ch = ServerChallenge::new();
        let m = answer(&thief, &ch, b"tok");
        assert_eq!(
            ch.verify(&owner.public_key(), &m, b"tok"),
            Err(AuthError::BadProof)
        );
    }

    #[test]
    fn replay_on_new_challenge_fails() {
        let k = PrivateKey::generate();
        let first = ServerChallenge::new();
        let m = answer(&k, &first, b"tok");
        let second = ServerChallenge::new();
        assert_eq!(
            second.verify(&k.public_key(), &m, b"tok"),
            Err(AuthError::BadProof)
        );
    }

    #[test]
    fn token_is_bound_into_proof() {
        let k = PrivateKey::generate();
        let ch = ServerChallenge::new();
        let m = answer(&k, &ch, b"tok");
        assert_eq!(
            ch.verify(&k.public_key(), &m, b"other"),
            Err(AuthError::BadProof)
        );
    }

    #[test]
    fn low_order_point_rejected() {
        let ch = ServerChallenge::new();
        assert_eq!(
            ch.verify(&PublicKey([0; 32]), &[0; 32], b""),
            Err(AuthError::WeakKey)
        );
        let k = PrivateKey::generate();
        assert_eq!(
            client_auth(&k, &[0; 32], &[1; 32], b"").unwrap_err(),
            AuthError::WeakKey
        );
    }

    #[test]
    fn token_compare() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abc", b"abd"));
        assert!(!token_matches(b"abc", b"abcd"));
    }
}

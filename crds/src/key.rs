//! WireGuard public keys as the API carries them: standard base64 (padded) of exactly 32
//! bytes, so 44 characters whose last is `=`.
//!
//! The same rule is enforced three times on purpose: by the CRD schema (the API server refuses
//! a malformed `status.publicKey` or peer key), by the operator (a cluster may run an older
//! CRD, and a key that passes the schema may still collide with another node's) and by the
//! agent (a spec written by anything else must not break its dataplane).

/// Length of a base64-encoded 32-byte key.
pub const PUBLIC_KEY_LEN: usize = 44;

/// The schema's pattern for a key. The 43rd character carries only 4 significant bits (32
/// bytes are 256 bits = 42 × 6 + 4), so it must be one whose low 2 bits are zero: this is
/// what makes the pattern accept exactly the canonical encodings of 32 bytes.
pub const PUBLIC_KEY_PATTERN: &str = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$";

/// Characters whose 6-bit value has its low 2 bits clear (see [`PUBLIC_KEY_PATTERN`]).
const LAST_SIGNIFICANT: &[u8] = b"AEIMQUYcgkosw048";

/// Whether `s` is the canonical base64 of exactly 32 bytes (a WireGuard public key).
pub fn is_public_key(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == PUBLIC_KEY_LEN
        && b[..42]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        && LAST_SIGNIFICANT.contains(&b[42])
        && b[43] == b'='
}

/// Why a reported key is not usable, in words for a condition message. The key itself is
/// never quoted whole: a hostile node may report megabytes.
pub fn key_problem(s: &str) -> Option<String> {
    if is_public_key(s) {
        return None;
    }
    let shown: String = s.chars().take(12).collect();
    let ellipsis = if s.chars().count() > 12 { "…" } else { "" };
    Some(format!(
        "publicKey {shown:?}{ellipsis} ({} bytes) is not the base64 of a 32-byte WireGuard key",
        s.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "YNqHbfBQKaGvzefgLJGJVgUoJfT2ECuTYwRYeKiM8ig=";

    #[test]
    fn accepts_canonical_32_byte_keys() {
        assert!(is_public_key(GOOD));
        assert!(is_public_key(&format!("{}=", "A".repeat(43))));
        assert!(is_public_key(&format!("{}8=", "/".repeat(42))));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "key-a",
            &GOOD[..43],                      // padding missing
            &format!("{GOOD}="),              // too long
            &format!("{}B=", "A".repeat(42)), // 43rd char has low bits set: not 32 bytes
            &format!("{}==", "A".repeat(42)), // 31 bytes
            &format!("{}-=", "A".repeat(42)), // URL-safe alphabet
            &format!("{}A=", "é".repeat(21)), // non-ASCII, same byte length
            &"A".repeat(1 << 16),
        ] {
            assert!(!is_public_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn pattern_agrees_with_the_check() {
        // The pattern's last class is the one `is_public_key` checks.
        assert!(PUBLIC_KEY_PATTERN.contains(std::str::from_utf8(LAST_SIGNIFICANT).unwrap()));
    }

    #[test]
    fn crd_rules_use_this_pattern() {
        // Attributes need literals: make sure the CRD's CEL rules carry exactly this pattern.
        let crds = crate::crdgen::render().unwrap();
        let peers = &crds.iter().find(|(f, _)| f.contains("peers")).unwrap().1;
        let body = &PUBLIC_KEY_PATTERN[1..PUBLIC_KEY_PATTERN.len() - 1];
        assert_eq!(peers.matches(body).count(), 2, "{peers}");
        assert_eq!(peers.matches("maxLength: 44").count(), 2);
    }

    #[test]
    fn problem_never_quotes_a_huge_key() {
        let m = key_problem(&"x".repeat(100_000)).unwrap();
        assert!(m.len() < 200, "{m}");
        assert!(m.contains("100000 bytes"), "{m}");
        assert_eq!(key_problem(GOOD), None);
    }
}

//! Secrets: a wrapper whose `Debug`/`Display` show only the 6-hex fingerprint, and constant-time
//! comparison (API.md §3.1).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// First 6 lowercase hex of SHA-256 of the token.
pub fn fingerprint(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))[..6].to_string()
}

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn random_hex(bytes: usize) -> Self {
        let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
        Self(hex::encode(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }

    /// Constant-time equality with a presented token.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "token:{}", self.fingerprint())
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "token:{}", self.fingerprint())
    }
}

/// Extracts the token of an `Authorization: Bearer …` header (scheme case-insensitive).
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?;
    let (scheme, token) = h.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && !token.bytes().any(|b| b.is_ascii_control()))
    .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("super-secret-token-value");
        assert!(!format!("{s:?} {s}").contains("super"));
        assert_eq!(
            format!("{s}"),
            format!("token:{}", fingerprint("super-secret-token-value"))
        );
        assert!(s.matches("super-secret-token-value"));
        assert!(!s.matches("super-secret-token-valuE"));
        assert_eq!(Secret::random_hex(32).expose().len(), 64);
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}

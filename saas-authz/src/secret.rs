//! Secrets we mint (API keys, invitation links): 256 random bits, stored only as a
//! SHA-256 digest, compared in constant time, and carried in one self-describing token.
//!
//! A token is `{prefix}_{base64url(tenant ‖ id ‖ secret)}`: 16 + 16 + 32 bytes, 86
//! characters after the prefix. The tenant and the id let the server find the row under
//! the tenant's row-level security without any cross-tenant lookup; the secret is checked
//! against the stored digest.

use std::fmt;

use aws_lc_rs::{constant_time, digest, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

const RAW_LEN: usize = 16 + 16 + 32;
/// Characters after `{prefix}_`.
pub(crate) const ENCODED_LEN: usize = 86;

/// 32 random bytes from the operating system's generator.
pub(crate) fn random_secret() -> [u8; 32] {
    let mut out = [0u8; 32];
    // The system generator only fails when the OS has no entropy source at all.
    if rand::fill(&mut out).is_err() {
        panic!("the operating system's random number generator failed");
    }
    out
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether the digest of `secret` is `stored`, in time independent of where they differ.
pub(crate) fn verify(secret: &[u8; 32], stored: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(&sha256(secret), stored).is_ok()
}

/// A parsed token: which tenant, which row, and the secret to check.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) tenant: Uuid,
    pub(crate) id: Uuid,
    pub(crate) secret: [u8; 32],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("tenant", &self.tenant)
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl Token {
    pub(crate) fn new(tenant: Uuid, id: Uuid) -> Self {
        Self {
            tenant,
            id,
            secret: random_secret(),
        }
    }

    pub(crate) fn encode(&self, prefix: &str) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[..16].copy_from_slice(self.tenant.as_bytes());
        raw[16..32].copy_from_slice(self.id.as_bytes());
        raw[32..].copy_from_slice(&self.secret);
        let mut out = String::with_capacity(prefix.len() + 1 + ENCODED_LEN);
        out.push_str(prefix);
        out.push('_');
        URL_SAFE_NO_PAD.encode_string(raw, &mut out);
        out
    }

    /// Parses `{prefix}_{86 characters}`; `None` for anything else.
    pub(crate) fn parse(prefix: &str, s: &str) -> Option<Self> {
        let body = s.strip_prefix(prefix)?.strip_prefix('_')?;
        if body.len() != ENCODED_LEN {
            return None;
        }
        let mut raw = [0u8; RAW_LEN];
        let n = URL_SAFE_NO_PAD.decode_slice(body, &mut raw).ok()?;
        if n != RAW_LEN {
            return None;
        }
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&raw[32..]);
        Some(Self {
            tenant: Uuid::from_slice(&raw[..16]).ok()?,
            id: Uuid::from_slice(&raw[16..32]).ok()?,
            secret,
        })
    }

    pub(crate) fn digest(&self) -> [u8; 32] {
        sha256(&self.secret)
    }
}

/// A secret shown once. `Debug` and `Display` never print it; [`expose`](Self::expose)
/// does, for the one response that hands it to its owner.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(s: String) -> Self {
        Self(s)
    }
    /// The secret itself. Show it once; never log or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let t = Token::new(Uuid::now_v7(), Uuid::now_v7());
        let s = t.encode("sk_live");
        assert_eq!(s.len(), "sk_live_".len() + ENCODED_LEN);
        assert_eq!(Token::parse("sk_live", &s), Some(t.clone()));
        assert!(verify(&t.secret, &t.digest()));
        assert!(!verify(&random_secret(), &t.digest()));
        assert_eq!(Token::parse("sk_test", &s), None);
        assert_eq!(Token::parse("sk_live", &s[..s.len() - 1]), None);
        assert_eq!(Token::parse("sk_live", &format!("{s}A")), None);
        let mut bad = s.clone();
        bad.replace_range(10..11, "*");
        assert_eq!(Token::parse("sk_live", &bad), None);
        assert!(format!("{t:?}").contains("redacted"));
        assert_eq!(format!("{:?}", Secret::new(s.clone())), "Secret([redacted])");
    }
}

//! Field-level encryption for secrets the product must read back (webhook signing
//! secrets, provider tokens).
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per value. A [`Keyring`] holds named
//! keys: values are encrypted with the current key and decrypted with whichever key
//! their id names, so keys rotate without rewriting every row at once
//! ([`Keyring::reencrypt`] moves a value to the current key). Associated data
//! ([`Aad`]) binds a ciphertext to its tenant, column and optionally row, so a value
//! copied elsewhere fails to decrypt.
//!
//! ```
//! use saas_core::crypto::{Aad, Keyring};
//! use saas_core::TenantId;
//!
//! let spec = format!("k2:{},k1:{}", Keyring::generate_key(), Keyring::generate_key());
//! let keyring = Keyring::from_spec(&spec).unwrap();
//! let tenant = TenantId::new();
//! let aad = Aad::new(tenant, "webhook_endpoints.secret");
//!
//! let sealed = keyring.encrypt(b"whsec_abc", &aad).unwrap();
//! assert!(sealed.starts_with("v1.k2."));
//! assert_eq!(keyring.decrypt(&sealed, &aad).unwrap().expose().as_slice(), b"whsec_abc");
//!
//! // The same ciphertext under another tenant does not decrypt.
//! let other = Aad::new(TenantId::new(), "webhook_endpoints.secret");
//! assert!(keyring.decrypt(&sealed, &other).is_err());
//! ```

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::id::TenantId;
use crate::problem::{IntoProblem, Problem};
use crate::telemetry::Redacted;

/// The environment variable [`Keyring::from_env`] reads.
pub const KEYS_ENV: &str = "SAAS_ENCRYPTION_KEYS";

const VERSION: &str = "v1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// An encryption operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The key specification is unusable.
    #[error("encryption keys are misconfigured: {0}; expected `id:base64-32-bytes[,id:…]`, current key first")]
    InvalidKeySpec(String),
    /// The environment variable is not set.
    #[error("{KEYS_ENV} is not set; generate a key with Keyring::generate_key()")]
    MissingKeys,
    /// The ciphertext names a key this keyring does not hold.
    #[error("the value was encrypted with key {0:?}, which is not in the keyring")]
    UnknownKey(String),
    /// The value is not a ciphertext produced here.
    #[error("the value is not a saas-kit ciphertext")]
    Malformed,
    /// Authentication failed: wrong key, tampered value, or a value moved to another
    /// tenant, column or row.
    #[error("the value does not decrypt here: it was altered or belongs to another tenant, column or row")]
    DecryptFailed,
}

impl IntoProblem for CryptoError {
    fn to_problem(&self) -> Problem {
        Problem::internal().with_internal(self)
    }
}

/// Associated data binding a ciphertext to where it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aad {
    bytes: Vec<u8>,
}

impl Aad {
    /// Binds to a tenant and a column (`"table.column"`).
    pub fn new(tenant: TenantId, column: &str) -> Self {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(b"saas-kit aad v1");
        bytes.extend_from_slice(tenant.as_uuid().as_bytes());
        bytes.extend_from_slice(&(column.len() as u32).to_be_bytes());
        bytes.extend_from_slice(column.as_bytes());
        Self { bytes }
    }

    /// Also binds to one row (its primary key).
    pub fn row(mut self, row: impl fmt::Display) -> Self {
        let row = row.to_string();
        self.bytes.extend_from_slice(&(row.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(row.as_bytes());
        self
    }
}

struct NamedKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// Named keys; the first is current. Keys never appear in `Debug` output.
pub struct Keyring {
    keys: Vec<NamedKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

fn valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Keyring {
    /// Parses `id:base64key[,id:base64key…]` (standard base64 of 32 bytes), current key first.
    pub fn from_spec(spec: &str) -> Result<Self, CryptoError> {
        let mut keys = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, b64) = item
                .split_once(':')
                .ok_or_else(|| CryptoError::InvalidKeySpec("an entry has no `id:` prefix".into()))?;
            if !valid_key_id(id) {
                return Err(CryptoError::InvalidKeySpec(
                    "a key id must be 1-32 letters, digits, `_` or `-`".into(),
                ));
            }
            if keys.iter().any(|k: &NamedKey| k.id == id) {
                return Err(CryptoError::InvalidKeySpec(format!("key id {id:?} appears twice")));
            }
            let raw = Zeroizing::new(
                STANDARD
                    .decode(b64.trim())
                    .map_err(|_| CryptoError::InvalidKeySpec(format!("key {id:?} is not base64")))?,
            );
            let cipher = XChaCha20Poly1305::new_from_slice(&raw)
                .map_err(|_| CryptoError::InvalidKeySpec(format!("key {id:?} is {} bytes, not 32", raw.len())))?;
            keys.push(NamedKey {
                id: id.to_owned(),
                cipher,
            });
        }
        if keys.is_empty() {
            return Err(CryptoError::InvalidKeySpec("no keys".into()));
        }
        Ok(Self { keys })
    }

    /// Reads [`KEYS_ENV`].
    pub fn from_env() -> Result<Self, CryptoError> {
        let spec = Redacted::new(std::env::var(KEYS_ENV).map_err(|_| CryptoError::MissingKeys)?);
        Self::from_spec(spec.expose())
    }

    /// A fresh random key, base64-encoded, for a key specification.
    pub fn generate_key() -> String {
        let mut key = Zeroizing::new([0u8; 32]);
        fill_random(key.as_mut_slice());
        STANDARD.encode(key.as_slice())
    }

    /// The id of the key new values are encrypted with.
    pub fn current_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Encrypts with the current key: `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &Aad) -> Result<String, CryptoError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let ct = key
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad.bytes,
                },
            )
            .map_err(|_| CryptoError::DecryptFailed)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Ok(format!("{VERSION}.{}.{}", key.id, URL_SAFE_NO_PAD.encode(blob)))
    }

    fn split(&self, sealed: &str) -> Result<(&NamedKey, Vec<u8>), CryptoError> {
        let mut parts = sealed.splitn(3, '.');
        let (v, id, body) = (parts.next(), parts.next(), parts.next());
        let (Some(VERSION), Some(id), Some(body)) = (v, id, body) else {
            return Err(CryptoError::Malformed);
        };
        if !valid_key_id(id) {
            return Err(CryptoError::Malformed);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        let blob = URL_SAFE_NO_PAD.decode(body).map_err(|_| CryptoError::Malformed)?;
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        Ok((key, blob))
    }

    /// Decrypts a value produced by [`Keyring::encrypt`] with the same associated data.
    pub fn decrypt(&self, sealed: &str, aad: &Aad) -> Result<Redacted<Vec<u8>>, CryptoError> {
        let (key, blob) = self.split(sealed)?;
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
        key.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: &aad.bytes,
                },
            )
            .map(Redacted::new)
            .map_err(|_| CryptoError::DecryptFailed)
    }

    /// Decrypts a value that holds UTF-8 text.
    pub fn decrypt_string(&self, sealed: &str, aad: &Aad) -> Result<Redacted<String>, CryptoError> {
        let bytes = self.decrypt(sealed, aad)?.into_inner();
        String::from_utf8(bytes)
            .map(Redacted::new)
            .map_err(|_| CryptoError::Malformed)
    }

    /// Whether a value is encrypted with a key other than the current one.
    pub fn needs_reencrypt(&self, sealed: &str) -> bool {
        sealed.split('.').nth(1).is_some_and(|id| id != self.current_key_id())
    }

    /// Re-encrypts a value under the current key; `None` when it already is.
    pub fn reencrypt(&self, sealed: &str, aad: &Aad) -> Result<Option<String>, CryptoError> {
        if !self.needs_reencrypt(sealed) {
            // Still authenticate it, so that a rotation job reports corrupt values.
            self.decrypt(sealed, aad)?;
            return Ok(None);
        }
        let plain = Zeroizing::new(self.decrypt(sealed, aad)?.into_inner());
        self.encrypt(&plain, aad).map(Some)
    }
}

fn fill_random(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        // The OS generator failing is unrecoverable for key or nonce material.
        panic!("the operating system's random number generator failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(spec: &str) -> Keyring {
        Keyring::from_spec(spec).unwrap()
    }

    #[test]
    fn rotation_decrypts_old_and_moves_to_current() {
        let (k1, k2) = (Keyring::generate_key(), Keyring::generate_key());
        let old = ring(&format!("k1:{k1}"));
        let new = ring(&format!("k2:{k2},k1:{k1}"));
        let aad = Aad::new(TenantId::new(), "t.c").row(7);
        let sealed = old.encrypt(b"secret", &aad).unwrap();
        assert!(new.needs_reencrypt(&sealed));
        assert_eq!(new.decrypt(&sealed, &aad).unwrap().expose(), b"secret");
        let moved = new.reencrypt(&sealed, &aad).unwrap().unwrap();
        assert!(moved.starts_with("v1.k2."));
        assert!(!new.needs_reencrypt(&moved));
        assert_eq!(new.reencrypt(&moved, &aad).unwrap(), None);
        assert_eq!(
            old.decrypt(&moved, &aad).unwrap_err(),
            CryptoError::UnknownKey("k2".into())
        );
    }

    #[test]
    fn moved_or_tampered_values_fail() {
        let kr = ring(&format!("a:{}", Keyring::generate_key()));
        let t = TenantId::new();
        let aad = Aad::new(t, "t.c").row(1);
        let sealed = kr.encrypt(b"x", &aad).unwrap();
        assert_eq!(
            kr.decrypt(&sealed, &Aad::new(t, "t.c").row(2)).unwrap_err(),
            CryptoError::DecryptFailed
        );
        assert_eq!(
            kr.decrypt(&sealed, &Aad::new(t, "t.d").row(1)).unwrap_err(),
            CryptoError::DecryptFailed
        );
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(kr.decrypt(&tampered, &aad).unwrap_err(), CryptoError::DecryptFailed);
        for bad in ["", "v1", "v1.a", "v1.a.!!", "v2.a.AAAA", "v1.a.AAAA", "v1.../x.AAAA"] {
            assert!(kr.decrypt(bad, &aad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nonces_differ() {
        let kr = ring(&format!("a:{}", Keyring::generate_key()));
        let aad = Aad::new(TenantId::new(), "t.c");
        assert_ne!(kr.encrypt(b"x", &aad).unwrap(), kr.encrypt(b"x", &aad).unwrap());
    }

    #[test]
    fn bad_specs_are_typed_errors() {
        let good = Keyring::generate_key();
        for bad in [
            String::new(),
            "nokey".into(),
            format!("bad id:{good}"),
            "a:not-base64!".into(),
            "a:AAAA".into(),
            format!("a:{good},a:{good}"),
        ] {
            assert!(
                matches!(Keyring::from_spec(&bad), Err(CryptoError::InvalidKeySpec(_))),
                "{bad}"
            );
        }
        let kr = ring(&format!("a:{good}"));
        assert!(!format!("{kr:?}").contains(&good));
    }
}

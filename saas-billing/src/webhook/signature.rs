//! Stripe's webhook signatures: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]`,
//! where each `v1` is HMAC-SHA256 over `"{t}.{raw body}"` keyed by the endpoint's whole
//! signing secret (`whsec_…`, prefix included, as Stripe's libraries use it). Other
//! schemes (`v0`, Stripe's test scheme) are ignored. The timestamp must be within the
//! tolerance of now, either way (300 s by default, as Stripe's libraries).

use hmac::{Hmac, KeyInit, Mac};
use saas_core::telemetry::Redacted;
use sha2::Sha256;

/// The header Stripe signs with.
pub const HEADER: &str = "stripe-signature";

/// Stripe's default tolerance for the signed timestamp.
pub const TOLERANCE_SECS: i64 = 300;

/// Why a delivery's signature does not verify. None of them says which secret or which
/// signature came close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error("no Stripe-Signature header")]
    Missing,
    /// The header has no timestamp or no `v1` signature, or is not text.
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    /// The timestamp is older or further in the future than the tolerance.
    #[error("the signed timestamp is outside the tolerance")]
    Timestamp,
    /// No `v1` signature matches any active secret.
    #[error("no signature matches")]
    Mismatch,
}

/// The endpoint's signing secrets: the current one and, during a rotation, the ones
/// Stripe may still sign with (it signs with every active secret, one `v1` each).
#[derive(Clone)]
pub struct WebhookSecrets {
    secrets: Vec<Redacted<String>>,
    tolerance_secs: i64,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("secrets", &self.secrets.len())
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

/// A signing secret that is not Stripe's `whsec_…` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a Stripe webhook signing secret starts with whsec_ (copy it from the endpoint's page in the dashboard, or `stripe listen`)"
)]
pub struct SecretError;

impl WebhookSecrets {
    /// One signing secret (`whsec_…`).
    pub fn new(secret: impl Into<String>) -> Result<Self, SecretError> {
        Self::rotating([secret.into()])
    }

    /// Several active secrets (a rotation in progress): a signature by any of them counts.
    pub fn rotating<I, S>(secrets: I) -> Result<Self, SecretError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let secrets: Vec<Redacted<String>> = secrets
            .into_iter()
            .map(|s| {
                let s: String = s.into();
                let s = s.trim().to_owned();
                if s.len() > "whsec_".len() && s.starts_with("whsec_") {
                    Ok(Redacted::new(s))
                } else {
                    Err(SecretError)
                }
            })
            .collect::<Result<_, _>>()?;
        if secrets.is_empty() {
            return Err(SecretError);
        }
        Ok(Self {
            secrets,
            tolerance_secs: TOLERANCE_SECS,
        })
    }

    /// The secrets from `STRIPE_WEBHOOK_SECRET` (comma-separated during a rotation).
    pub fn from_env() -> Result<Self, SecretError> {
        let raw = std::env::var("STRIPE_WEBHOOK_SECRET").map_err(|_| SecretError)?;
        Self::rotating(raw.split(',').filter(|s| !s.trim().is_empty()).map(str::to_owned))
    }

    /// The tolerance for the signed timestamp, either way.
    pub fn tolerance(mut self, secs: i64) -> Self {
        self.tolerance_secs = secs;
        self
    }

    /// Checks `header` (the `Stripe-Signature` value) over `body` at `now` (Unix seconds).
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8], now: i64) -> Result<(), SignatureError> {
        let header =
            std::str::from_utf8(header.ok_or(SignatureError::Missing)?).map_err(|_| SignatureError::Malformed)?;
        let mut timestamp = None;
        let mut signatures: Vec<[u8; 32]> = Vec::new();
        for part in header.split(',') {
            let Some((k, v)) = part.trim().split_once('=') else {
                continue;
            };
            match k {
                "t" => timestamp = v.parse::<i64>().ok(),
                "v1" => {
                    if let Some(sig) = decode_hex32(v) {
                        signatures.push(sig);
                    }
                }
                _ => {}
            }
        }
        let t = timestamp.ok_or(SignatureError::Malformed)?;
        if signatures.is_empty() {
            return Err(SignatureError::Malformed);
        }
        if now.abs_diff(t) > self.tolerance_secs.unsigned_abs() {
            return Err(SignatureError::Timestamp);
        }
        let ts = t.to_string();
        for secret in &self.secrets {
            let mac = keyed(secret.expose(), &ts, body);
            // `verify_slice` compares in constant time.
            if signatures.iter().any(|sig| mac.clone().verify_slice(sig).is_ok()) {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }
}

fn keyed(secret: &str, ts: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Stripe-Signature` header Stripe would send for `body` at `timestamp`, signed
/// with `secret` (for tests, the simulator and local tools).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let sig = keyed(secret, &timestamp.to_string(), body).finalize().into_bytes();
    let mut out = format!("t={timestamp},v1=");
    for b in sig {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid"}"#;
    const NOW: i64 = 1_767_225_600;

    #[test]
    fn matches_stripes_own_construction() {
        // HMAC-SHA256("whsec_test_secret", "1767225600.{body}"), computed independently
        // with Python's hmac module, the way Stripe's libraries build it.
        let header = sign(SECRET, NOW, BODY);
        assert_eq!(header, format!("t={NOW},v1={PYTHON_HMAC}"));
        WebhookSecrets::new(SECRET)
            .unwrap()
            .verify(Some(header.as_bytes()), BODY, NOW)
            .unwrap();
    }

    // python3 -c 'import hmac,hashlib;print(hmac.new(b"whsec_test_secret",
    //   b"1767225600." + b"{\"id\":\"evt_1\",\"type\":\"invoice.paid\"}", hashlib.sha256).hexdigest())'
    const PYTHON_HMAC: &str = "4bdb5c9d159e353341cd503699ef7836d66ab07344a66bb2fa07de092c7a7d5d";

    #[test]
    fn each_bad_delivery_fails_for_its_own_reason() {
        let s = WebhookSecrets::new(SECRET).unwrap();
        let good = sign(SECRET, NOW, BODY);
        let v = |h: Option<&str>, body: &[u8], now| s.verify(h.map(str::as_bytes), body, now);
        assert_eq!(v(Some(&good), BODY, NOW), Ok(()));
        assert_eq!(v(None, BODY, NOW), Err(SignatureError::Missing));
        assert_eq!(v(Some("garbage"), BODY, NOW), Err(SignatureError::Malformed));
        assert_eq!(v(Some("t=1,v0=abc"), BODY, NOW), Err(SignatureError::Malformed));
        assert_eq!(
            v(Some(&sign("whsec_other", NOW, BODY)), BODY, NOW),
            Err(SignatureError::Mismatch)
        );
        // The secret without its prefix is a different key.
        assert_eq!(
            v(Some(&sign("test_secret", NOW, BODY)), BODY, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v(Some(&good), b"{\"id\":\"evt_2\"}", NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(v(Some(&good), BODY, NOW + 301), Err(SignatureError::Timestamp));
        assert_eq!(v(Some(&good), BODY, NOW - 301), Err(SignatureError::Timestamp));
        assert_eq!(v(Some(&good), BODY, NOW + 300), Ok(()));
    }

    #[test]
    fn any_v1_by_any_active_secret_counts() {
        let rotating = WebhookSecrets::rotating(["whsec_new", "whsec_old"]).unwrap();
        let old = sign("whsec_old", NOW, BODY);
        let old_sig = old.split("v1=").nth(1).unwrap();
        let stranger = sign("whsec_stranger", NOW, BODY);
        let stranger_sig = stranger.split("v1=").nth(1).unwrap();
        let both = format!("t={NOW},v1={stranger_sig},v0=00,v1={old_sig}");
        assert_eq!(rotating.verify(Some(both.as_bytes()), BODY, NOW), Ok(()));
        let only_new = WebhookSecrets::new("whsec_new").unwrap();
        assert_eq!(
            only_new.verify(Some(old.as_bytes()), BODY, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn secrets_must_look_like_stripes() {
        assert!(WebhookSecrets::new("test_secret").is_err());
        assert!(WebhookSecrets::new("whsec_").is_err());
        assert!(WebhookSecrets::rotating(Vec::<String>::new()).is_err());
        let debug = format!("{:?}", WebhookSecrets::new(SECRET).unwrap());
        assert!(!debug.contains("test_secret"), "{debug}");
    }
}

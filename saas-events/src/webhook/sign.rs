//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): `webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
//! secrets written `whsec_<base64>`. [`verify`] is the receiver's side, for our users'
//! customers (and our own tests).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Header names.
pub const ID: &str = "webhook-id";
/// Header names.
pub const TIMESTAMP: &str = "webhook-timestamp";
/// Header names.
pub const SIGNATURE: &str = "webhook-signature";

/// Default tolerance for the timestamp, either way (5 minutes, as the reference libraries).
pub const TOLERANCE_SECS: i64 = 300;

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A header is missing or unreadable.
    #[error("missing or malformed {0} header")]
    Header(&'static str),
    /// The secret is not `whsec_<base64>` (or plain base64).
    #[error("the secret is not a base64 webhook secret")]
    Secret,
    /// The timestamp is too old or too far in the future (replay protection).
    #[error("the timestamp is outside the tolerance")]
    Timestamp,
    /// No signature matches.
    #[error("no signature matches")]
    Signature,
}

/// A new secret: `whsec_` and 24 random bytes in base64.
pub fn generate_secret() -> String {
    let mut key = [0u8; 24];
    if getrandom::fill(&mut key).is_err() {
        // The OS random source failing is not something to sign with.
        panic!("the operating system's random source failed");
    }
    format!("whsec_{}", STANDARD.encode(key))
}

fn key(secret: &str) -> Result<Vec<u8>, VerifyError> {
    STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| VerifyError::Secret)
}

/// `v1,<signature>` of `body` for message `id` at `timestamp` (Unix seconds).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, VerifyError> {
    let key = key(secret)?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).map_err(|_| VerifyError::Secret)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// Checks a delivery: the timestamp within `tolerance_secs` of `now` (Unix seconds) and
/// one of the space-separated `v1,` signatures made with `secret`.
pub fn verify(
    secret: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let get = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(VerifyError::Header(name))
    };
    let id = get(ID)?;
    let ts: i64 = get(TIMESTAMP)?
        .trim()
        .parse()
        .map_err(|_| VerifyError::Header(TIMESTAMP))?;
    if (now - ts).abs() > tolerance_secs {
        return Err(VerifyError::Timestamp);
    }
    let expected = sign(secret, id, ts, body)?;
    let expected = expected.as_bytes();
    let matches = get(SIGNATURE)?.split(' ').any(|candidate| {
        let c = candidate.as_bytes();
        // Constant time for equal lengths.
        c.len() == expected.len() && c.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if matches { Ok(()) } else { Err(VerifyError::Signature) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    #[test]
    fn the_published_test_vector() {
        assert_eq!(
            sign(SECRET, MSG, TS, BODY).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    fn headers(sig: &str, ts: i64) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(ID, MSG.parse().unwrap());
        h.insert(TIMESTAMP, ts.to_string().parse().unwrap());
        h.insert(SIGNATURE, sig.parse().unwrap());
        h
    }

    #[test]
    fn verify_accepts_the_vector_and_rotation_lists_and_refuses_the_rest() {
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(
            verify(SECRET, &headers(good, TS), BODY, TS + 10, TOLERANCE_SECS),
            Ok(())
        );
        // Several signatures (secret rotation): any one may match.
        let two = format!("v1,bm9wZQ== {good}");
        assert_eq!(verify(SECRET, &headers(&two, TS), BODY, TS, TOLERANCE_SECS), Ok(()));
        assert_eq!(
            verify(SECRET, &headers(good, TS), br#"{"test": 2432232315}"#, TS, 300),
            Err(VerifyError::Signature)
        );
        assert_eq!(
            verify(SECRET, &headers(good, TS), BODY, TS + 301, 300),
            Err(VerifyError::Timestamp)
        );
        assert_eq!(
            verify(SECRET, &headers(good, TS), BODY, TS - 301, 300),
            Err(VerifyError::Timestamp)
        );
        assert_eq!(
            verify("whsec_%%%", &headers(good, TS), BODY, TS, 300),
            Err(VerifyError::Secret)
        );
        assert_eq!(
            verify(SECRET, &http::HeaderMap::new(), BODY, TS, 300),
            Err(VerifyError::Header(ID))
        );
        let fresh = generate_secret();
        assert!(fresh.starts_with("whsec_") && key(&fresh).unwrap().len() == 24);
    }
}

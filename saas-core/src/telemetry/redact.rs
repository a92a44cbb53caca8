//! Keeping secrets out of logs.

use std::borrow::Cow;
use std::fmt;

use http::HeaderMap;
use http::header::HeaderName;

/// Headers whose values are never logged or reported.
pub const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "stripe-signature",
    "webhook-signature",
    "x-api-key",
];

/// Field names whose values the JSON log layer replaces with `[redacted]`.
pub const SENSITIVE_FIELDS: &[&str] = &[
    "authorization",
    "cookie",
    "set_cookie",
    "password",
    "secret",
    "token",
    "api_key",
    "stripe_signature",
    "webhook_signature",
    "secret_key",
];

/// How secrets begin that can end up inside text (an error message, a URL, a debug dump):
/// Stripe's secret and restricted API keys and webhook signing secrets.
/// [`scrub_secrets`] cuts each to its prefix.
pub const SECRET_PREFIXES: &[&str] = &["sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_"];

/// `text` with each secret that starts with one of [`SECRET_PREFIXES`] replaced by its
/// prefix and `[redacted]`; borrowed when there is none (the common case costs one scan).
///
/// ```
/// use saas_core::telemetry::scrub_secrets;
/// assert_eq!(
///     scrub_secrets("Stripe refused sk_live_51HxYz: bad key"),
///     "Stripe refused sk_live_[redacted]: bad key"
/// );
/// assert_eq!(scrub_secrets("nothing here"), "nothing here");
/// ```
pub fn scrub_secrets(text: &str) -> Cow<'_, str> {
    let next = |from: usize| {
        SECRET_PREFIXES
            .iter()
            .filter_map(|p| text[from..].find(p).map(|i| (from + i, p.len())))
            .min()
    };
    let Some(mut found) = next(0) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    loop {
        let (at, len) = found;
        let secret_start = at + len;
        let secret_len = text[secret_start..]
            .bytes()
            .take_while(u8::is_ascii_alphanumeric)
            .count();
        out.push_str(&text[copied..secret_start]);
        if secret_len > 0 {
            out.push_str("[redacted]");
        }
        copied = secret_start + secret_len;
        match next(copied) {
            Some(f) => found = f,
            None => break,
        }
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Whether a header's value must not be logged.
pub fn is_sensitive_header(name: &HeaderName) -> bool {
    SENSITIVE_HEADERS.contains(&name.as_str())
}

/// Whether a header (by name, any case) must not be logged.
pub fn is_sensitive_header_str(name: &str) -> bool {
    SENSITIVE_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether a log field's value must not be logged.
pub fn is_sensitive_field(name: &str) -> bool {
    let lower = name.to_ascii_lowercase().replace('-', "_");
    SENSITIVE_FIELDS
        .iter()
        .any(|f| lower == *f || lower.ends_with(&format!("_{f}")))
}

/// A value that prints `[redacted]` in `Debug` and `Display`.
///
/// ```
/// use saas_core::telemetry::Redacted;
/// let key = Redacted::new("sk_live_123".to_string());
/// assert_eq!(format!("{key:?} {key}"), "[redacted] [redacted]");
/// assert_eq!(key.expose(), "sk_live_123");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// Wraps a secret.
    pub const fn new(value: T) -> Self {
        Self(value)
    }
    /// The secret itself: every call site is a place where it could leak, so keep them few.
    pub fn expose(&self) -> &T {
        &self.0
    }
    /// Unwraps the secret.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Formats a header map for logs with the [`SENSITIVE_HEADERS`] replaced by `[redacted]`.
pub struct RedactedHeaders<'a>(pub &'a HeaderMap);

impl fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (name, value) in self.0 {
            if is_sensitive_header(name) {
                m.entry(&name.as_str(), &"[redacted]");
            } else {
                m.entry(&name.as_str(), &value.to_str().unwrap_or("[binary]"));
            }
        }
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_redacted() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        h.insert("cookie", "sid=abc".parse().unwrap());
        h.insert("accept", "text/plain".parse().unwrap());
        let s = format!("{:?}", RedactedHeaders(&h));
        assert!(!s.contains("abc"), "{s}");
        assert!(s.contains("text/plain"));
    }

    #[test]
    fn secrets_inside_text_are_cut_to_their_prefix() {
        assert_eq!(
            scrub_secrets("key=sk_test_abc123XYZ, next rk_live_9 and whsec_s3cr3t."),
            "key=sk_test_[redacted], next rk_live_[redacted] and whsec_[redacted]."
        );
        assert_eq!(scrub_secrets("ends with sk_live_"), "ends with sk_live_");
        assert!(matches!(scrub_secrets("sk_ is not a key"), Cow::Borrowed(_)));
        assert_eq!(scrub_secrets("été sk_test_x é"), "été sk_test_[redacted] é");
    }

    #[test]
    fn field_names_are_matched() {
        assert!(is_sensitive_field("stripe_secret_key"));
        assert!(is_sensitive_field("password"));
        assert!(is_sensitive_field("db_password"));
        assert!(is_sensitive_field("Stripe-Signature"));
        assert!(!is_sensitive_field("request_id"));
        assert!(!is_sensitive_field("tokens_used_count"));
    }
}

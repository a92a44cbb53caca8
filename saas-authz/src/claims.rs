//! What a verified token says about its bearer, read the way each identity provider
//! writes it.

use serde_json::{Map, Value};

use crate::error::AuthError;

/// How to read the claims of a provider's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClaimPreset {
    /// Plain OpenID Connect: `sub`, `email`, `email_verified`, `name`; MFA when `amr`
    /// contains `mfa`, `otp`, `hwk`, `swk`, `sms` or `fido`.
    #[default]
    Oidc,
    /// Auth0: as OIDC, plus `org_id`, and custom claims under a namespace
    /// (`https://example.com/email`) preferred over the bare names when present.
    Auth0 {
        /// The custom-claim namespace, such as `https://example.com/`.
        namespace: Option<String>,
    },
    /// Clerk session tokens: `sub`, `sid`, organisation in `o.id` / `o.rol`, second-factor
    /// verification age in `fva[1]` (`-1` when no second factor was used). Email and
    /// `email_verified` only when the session-token template adds them.
    Clerk,
}

impl ClaimPreset {
    /// Auth0 with custom claims under `namespace` (e.g. `https://example.com/`).
    pub fn auth0(namespace: impl Into<String>) -> Self {
        ClaimPreset::Auth0 {
            namespace: Some(namespace.into()),
        }
    }

    /// Reads an [`Identity`] out of verified claims.
    pub fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, AuthError> {
        let str_claim = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let subject = str_claim("sub").ok_or(AuthError::MissingClaim("sub"))?;
        if subject.is_empty() || subject.len() > 255 {
            return Err(AuthError::MissingClaim("sub"));
        }
        let issuer = str_claim("iss").ok_or(AuthError::MissingClaim("iss"))?;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(AuthError::MissingClaim("exp"))?;
        let amr_mfa = || {
            claims.get("amr").and_then(Value::as_array).is_some_and(|amr| {
                amr.iter()
                    .filter_map(Value::as_str)
                    .any(|m| matches!(m, "mfa" | "otp" | "hwk" | "swk" | "sms" | "fido"))
            })
        };
        let mut id = Identity {
            issuer,
            subject,
            email: str_claim("email").map(|e| e.to_lowercase()),
            email_verified: claims.get("email_verified").and_then(Value::as_bool).unwrap_or(false),
            name: str_claim("name"),
            mfa: false,
            org_id: None,
            org_role: None,
            session_id: str_claim("sid"),
            expires_at,
        };
        match self {
            ClaimPreset::Oidc => id.mfa = amr_mfa(),
            ClaimPreset::Auth0 { namespace } => {
                id.mfa = amr_mfa();
                id.org_id = str_claim("org_id");
                if let Some(ns) = namespace {
                    let ns_claim = |name: &str| claims.get(&format!("{ns}{name}"));
                    if let Some(email) = ns_claim("email").and_then(Value::as_str) {
                        id.email = Some(email.to_lowercase());
                    }
                    if let Some(v) = ns_claim("email_verified").and_then(Value::as_bool) {
                        id.email_verified = v;
                    }
                    if let Some(name) = ns_claim("name").and_then(Value::as_str) {
                        id.name = Some(name.to_owned());
                    }
                    if let Some(role) = ns_claim("org_role").and_then(Value::as_str) {
                        id.org_role = Some(role.to_owned());
                    }
                }
            }
            ClaimPreset::Clerk => {
                // fva = [minutes since first factor, minutes since second factor or -1].
                id.mfa = claims
                    .get("fva")
                    .and_then(Value::as_array)
                    .and_then(|fva| fva.get(1))
                    .and_then(Value::as_i64)
                    .is_some_and(|age| age >= 0);
                if let Some(o) = claims.get("o").and_then(Value::as_object) {
                    id.org_id = o.get("id").and_then(Value::as_str).map(str::to_owned);
                    id.org_role = o.get("rol").and_then(Value::as_str).map(str::to_owned);
                }
                // Clerk puts email in session tokens only through a custom template; add
                // `email_verified` there too, or invitations cannot match the address.
            }
        }
        if id.email.as_ref().is_some_and(|e| e.len() > 320) {
            id.email = None;
        }
        Ok(id)
    }
}

/// The bearer of a verified token, as the identity provider describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// `iss`.
    pub issuer: String,
    /// `sub`: the provider's id for the user.
    pub subject: String,
    /// The email address, lower-cased.
    pub email: Option<String>,
    /// Whether the provider verified that address.
    pub email_verified: bool,
    /// The display name.
    pub name: Option<String>,
    /// Whether a second factor was used for this session.
    pub mfa: bool,
    /// The provider's organisation id.
    pub org_id: Option<String>,
    /// The provider's organisation role.
    pub org_role: Option<String>,
    /// The provider's session id (`sid`).
    pub session_id: Option<String>,
    /// `exp`, in seconds since the epoch.
    pub expires_at: i64,
}

impl Identity {
    /// An identity with only an issuer, a subject and an expiry (for provisioning users
    /// from another source, and for tests).
    pub fn new(issuer: impl Into<String>, subject: impl Into<String>, expires_at: i64) -> Self {
        Self {
            issuer: issuer.into(),
            subject: subject.into(),
            email: None,
            email_verified: false,
            name: None,
            mfa: false,
            org_id: None,
            org_role: None,
            session_id: None,
            expires_at,
        }
    }

    /// Sets the email address (lower-cased) and whether it was verified.
    pub fn with_email(mut self, email: &str, verified: bool) -> Self {
        self.email = Some(email.to_lowercase());
        self.email_verified = verified;
        self
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn oidc_reads_amr() {
        let c =
            claims(json!({"iss":"i","sub":"u1","exp":5,"email":"A@B.io","email_verified":true,"amr":["pwd","otp"]}));
        let id = ClaimPreset::Oidc.identity(&c).unwrap();
        assert!(id.mfa && id.email_verified);
        assert_eq!(id.email.as_deref(), Some("a@b.io"));
        let c = claims(json!({"iss":"i","sub":"u1","exp":5,"amr":["pwd"]}));
        assert!(!ClaimPreset::Oidc.identity(&c).unwrap().mfa);
    }

    #[test]
    fn auth0_namespaced_and_org() {
        let c = claims(json!({"iss":"i","sub":"auth0|1","exp":5,"org_id":"org_9",
            "https://x.io/email":"n@x.io","https://x.io/email_verified":true,"amr":["mfa"]}));
        let id = ClaimPreset::auth0("https://x.io/").identity(&c).unwrap();
        assert_eq!(id.org_id.as_deref(), Some("org_9"));
        assert_eq!(id.email.as_deref(), Some("n@x.io"));
        assert!(id.mfa && id.email_verified);
    }

    #[test]
    fn clerk_fva_and_org() {
        let c = claims(
            json!({"iss":"i","sub":"user_1","exp":5,"sid":"sess_1","fva":[3,-1],"o":{"id":"org_1","rol":"admin"}}),
        );
        let id = ClaimPreset::Clerk.identity(&c).unwrap();
        assert!(!id.mfa);
        assert_eq!(id.org_role.as_deref(), Some("admin"));
        assert_eq!(id.session_id.as_deref(), Some("sess_1"));
        let c = claims(json!({"iss":"i","sub":"user_1","exp":5,"fva":[3,0]}));
        assert!(ClaimPreset::Clerk.identity(&c).unwrap().mfa);
    }

    #[test]
    fn missing_sub_is_an_error() {
        let c = claims(json!({"iss":"i","exp":5}));
        assert!(matches!(
            ClaimPreset::Oidc.identity(&c),
            Err(AuthError::MissingClaim("sub"))
        ));
    }
}

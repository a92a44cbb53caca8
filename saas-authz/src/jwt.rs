//! Verifying the identity provider's tokens: the issuer's keys (JWKS, from a URL or OIDC
//! discovery, cached, refreshed in the background, refetched on an unknown `kid` at a
//! bounded rate) and the checks on each token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::claims::{ClaimPreset, Identity};
use crate::error::{AuthError, IssuerError};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
const MAX_DOCUMENT_LEN: usize = 512 * 1024;

/// The algorithms accepted by default: asymmetric only. A token's algorithm must also be
/// the one its key is for, so a token "signed" with HS256 and the public key, or with
/// `alg: none`, never verifies.
pub const DEFAULT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

struct VerifyKey {
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    without_kid: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    fn find(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            // No kid: only unambiguous when the issuer publishes exactly one key.
            None => match (self.by_kid.len(), self.without_kid.len()) {
                (1, 0) => self.by_kid.values().next().cloned(),
                (0, 1) => self.without_kid.first().cloned(),
                _ => None,
            },
        }
    }

    fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }
}

/// The algorithm a published key is for: its `alg`, or what its type implies. Symmetric
/// (`oct`) keys are never used.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        let alg: Algorithm = alg.to_string().parse().ok()?;
        return (!matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)).then_some(alg);
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => Some(Algorithm::EdDSA),
        _ => None,
    }
}

fn parse_key_set(url: &str, body: &[u8]) -> Result<KeySet, IssuerError> {
    #[derive(Deserialize)]
    struct Raw {
        keys: Vec<Value>,
    }
    let invalid = |reason: String| IssuerError::Invalid {
        url: url.to_owned(),
        what: "JWKS",
        reason,
    };
    let raw: Raw = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    let mut set = KeySet::default();
    for value in raw.keys {
        // One odd key (an unknown type, an encryption key) must not hide the others.
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let Some(alg) = key_algorithm(&jwk) else { continue };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
        let key = Arc::new(VerifyKey { alg, key });
        match jwk.common.key_id {
            Some(kid) => {
                set.by_kid.insert(kid, key);
            }
            None => set.without_kid.push(key),
        }
    }
    if set.len() == 0 {
        return Err(invalid("no usable signing key".into()));
    }
    Ok(set)
}

struct IssuerInner {
    issuer: String,
    jwks_uri: String,
    http: reqwest::Client,
    keys: ArcSwap<KeySet>,
    last_fetch: tokio::sync::Mutex<Instant>,
    min_refetch: Duration,
    fetches: AtomicU64,
}

/// An identity provider: its issuer identifier and its published keys.
///
/// Keys are fetched once at construction, refreshed by [`spawn_refresh`](Self::spawn_refresh),
/// and refetched when a token names an unknown `kid` — at most once per
/// [`min_refetch_interval`](Self::min_refetch_interval) (30 s by default), so random
/// `kid`s cannot make us hammer the provider.
#[derive(Clone)]
pub struct Issuer {
    inner: Arc<IssuerInner>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.inner.issuer)
            .field("jwks_uri", &self.inner.jwks_uri)
            .field("keys", &self.inner.keys.load().len())
            .finish()
    }
}

fn http_client() -> Result<reqwest::Client, IssuerError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .map_err(|e| IssuerError::Fetch {
            url: String::new(),
            reason: e.to_string(),
        })
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, IssuerError> {
    let failed = |reason: String| IssuerError::Fetch {
        url: url.to_owned(),
        reason,
    };
    let mut response = http.get(url).send().await.map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("status {}", response.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
        if body.len() + chunk.len() > MAX_DOCUMENT_LEN {
            return Err(failed(format!("larger than {MAX_DOCUMENT_LEN} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Issuer {
    /// Finds the issuer's keys through OpenID Connect discovery
    /// (`{issuer}/.well-known/openid-configuration`); the document must name the same
    /// issuer.
    pub async fn discover(issuer: &str) -> Result<Self, IssuerError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let http = http_client()?;
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let body = fetch(&http, &url).await?;
        let doc: Discovery = serde_json::from_slice(&body).map_err(|e| IssuerError::Invalid {
            url: url.clone(),
            what: "OpenID discovery document",
            reason: e.to_string(),
        })?;
        if doc.issuer != issuer {
            return Err(IssuerError::IssuerMismatch {
                url,
                expected: issuer.to_owned(),
                found: doc.issuer,
            });
        }
        Self::build(http, issuer, &doc.jwks_uri).await
    }

    /// An issuer whose keys are published at `jwks_uri`.
    pub async fn from_jwks_url(issuer: &str, jwks_uri: &str) -> Result<Self, IssuerError> {
        Self::build(http_client()?, issuer, jwks_uri).await
    }

    async fn build(http: reqwest::Client, issuer: &str, jwks_uri: &str) -> Result<Self, IssuerError> {
        let body = fetch(&http, jwks_uri).await?;
        let keys = parse_key_set(jwks_uri, &body)?;
        Ok(Self {
            inner: Arc::new(IssuerInner {
                issuer: issuer.to_owned(),
                jwks_uri: jwks_uri.to_owned(),
                http,
                keys: ArcSwap::from_pointee(keys),
                last_fetch: tokio::sync::Mutex::new(Instant::now()),
                min_refetch: Duration::from_secs(30),
                fetches: AtomicU64::new(1),
            }),
        })
    }

    /// Sets the shortest time between two fetches caused by unknown `kid`s. Call before
    /// sharing the issuer.
    pub fn min_refetch_interval(mut self, every: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.min_refetch = every;
        }
        self
    }

    /// The issuer identifier (`iss`).
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Where the keys are published.
    pub fn jwks_uri(&self) -> &str {
        &self.inner.jwks_uri
    }

    /// How many times the key set was fetched (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Fetches the key set now and swaps it in. A failed fetch keeps the current keys.
    pub async fn refresh(&self) -> Result<(), IssuerError> {
        self.inner.refresh().await
    }

    /// Refreshes the keys every `every` in a background task, which ends when the last
    /// handle to this issuer is dropped. Failures are logged; the previous keys stay.
    pub fn spawn_refresh(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<IssuerInner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { break };
                if let Err(e) = inner.refresh().await {
                    tracing::warn!(error = %e, issuer = %inner.issuer, "refreshing the identity provider's keys failed");
                }
            }
        })
    }

    async fn key(&self, kid: Option<&str>) -> Result<Arc<VerifyKey>, AuthError> {
        if let Some(key) = self.inner.keys.load().find(kid) {
            return Ok(key);
        }
        if kid.is_some_and(|k| k.len() > 256) {
            return Err(AuthError::UnknownKey);
        }
        {
            let mut last = self.inner.last_fetch.lock().await;
            // Another request may have refreshed while we waited for the lock.
            if let Some(key) = self.inner.keys.load().find(kid) {
                return Ok(key);
            }
            if last.elapsed() < self.inner.min_refetch {
                return Err(AuthError::UnknownKey);
            }
            *last = Instant::now();
            if let Err(e) = self.inner.fetch_and_store().await {
                tracing::warn!(error = %e, "refetching keys for an unknown kid failed");
                return Err(AuthError::IdentityProvider(e.to_string()));
            }
        }
        self.inner.keys.load().find(kid).ok_or(AuthError::UnknownKey)
    }
}

impl IssuerInner {
    async fn fetch_and_store(&self) -> Result<(), IssuerError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let body = fetch(&self.http, &self.jwks_uri).await?;
        let keys = parse_key_set(&self.jwks_uri, &body)?;
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    async fn refresh(&self) -> Result<(), IssuerError> {
        let mut last = self.last_fetch.lock().await;
        *last = Instant::now();
        self.fetch_and_store().await
    }
}

/// Verifies an issuer's tokens: signature with the published key for the token's `kid`
/// and only that key's algorithm, `iss`, `aud`, `exp` and `nbf` with a leeway, the `azp`
/// allow-list, then reads the claims with a [`ClaimPreset`].
#[derive(Clone, Debug)]
pub struct Oidc {
    issuer: Issuer,
    audiences: Vec<String>,
    /// `aud` is deliberately not checked ([`Oidc::without_audience_check`]).
    any_audience: bool,
    authorized_parties: Option<Vec<String>>,
    leeway: u64,
    preset: ClaimPreset,
    algorithms: Vec<Algorithm>,
}

impl Oidc {
    /// Verifies tokens of `issuer`, with the plain OIDC claims and a 30-second leeway.
    /// Configure an [`audience`](Self::audience): until then every token is refused
    /// ([`AuthError::NoAudience`]), since a token the provider issued to another
    /// application of yours would otherwise be accepted.
    pub fn new(issuer: Issuer) -> Self {
        Self {
            issuer,
            audiences: Vec::new(),
            any_audience: false,
            authorized_parties: None,
            leeway: 30,
            preset: ClaimPreset::Oidc,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
        }
    }

    /// Requires `aud` to contain `audience` (call again to accept several). Required,
    /// unless [`without_audience_check`](Self::without_audience_check) says otherwise.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Accepts tokens whatever their `aud`, for providers that set none (Clerk's session
    /// tokens); bind tokens to your application with
    /// [`authorized_parties`](Self::authorized_parties) instead. Logs a warning when
    /// called (at start-up): any token of the same issuer, for any application, passes
    /// the audience check.
    pub fn without_audience_check(mut self) -> Self {
        tracing::warn!(
            issuer = self.issuer.issuer(),
            "token audience is not checked: any token of this issuer, for any application, is accepted \
             (configure Oidc::audience, or at least authorized_parties)"
        );
        self.any_audience = true;
        self
    }

    /// Requires `azp` to be one of `parties` (Clerk: your frontend origins).
    pub fn authorized_parties<I: IntoIterator<Item = S>, S: Into<String>>(mut self, parties: I) -> Self {
        self.authorized_parties = Some(parties.into_iter().map(Into::into).collect());
        self
    }

    /// Clock skew tolerated on `exp` and `nbf`.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.as_secs();
        self
    }

    /// How to read the provider's claims.
    pub fn claims(mut self, preset: ClaimPreset) -> Self {
        self.preset = preset;
        self
    }

    /// Restricts the accepted algorithms (asymmetric ones only; HMAC is never accepted).
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        self.algorithms = algorithms
            .iter()
            .copied()
            .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .collect();
        self
    }

    /// The issuer.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// The leeway in seconds.
    pub(crate) fn leeway_secs(&self) -> u64 {
        self.leeway
    }

    /// Verifies `token` and reads its bearer's identity.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("the token is too long"));
        }
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(AuthError::Malformed("not a JSON Web Token"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(map_error)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let key = self.issuer.key(header.kid.as_deref()).await?;
        if key.alg != header.alg {
            return Err(AuthError::Algorithm);
        }
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[self.issuer.issuer()]);
        let mut required = vec!["exp", "iss", "sub"];
        if self.audiences.is_empty() {
            if !self.any_audience {
                tracing::error!(issuer = self.issuer.issuer(), "{}", AuthError::NoAudience);
                return Err(AuthError::NoAudience);
            }
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(map_error)?;
        let claims = data.claims;
        if let Some(parties) = &self.authorized_parties {
            let azp = claims.get("azp").and_then(Value::as_str);
            if !azp.is_some_and(|azp| parties.iter().any(|p| p == azp)) {
                return Err(AuthError::WrongAuthorizedParty);
            }
        }
        self.preset.identity(&claims)
    }
}

fn map_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            AuthError::Algorithm
        }
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidSubject => AuthError::MissingClaim("sub"),
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            "nbf" => "nbf",
            _ => "sub",
        }),
        ErrorKind::InvalidClaimFormat(_) => AuthError::Malformed("a registered claim has the wrong type"),
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey | ErrorKind::InvalidRsaKey(_) => {
            AuthError::BadSignature
        }
        _ => AuthError::Malformed("not a valid JSON Web Token"),
    }
}

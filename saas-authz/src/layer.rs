//! `AuthenticateLayer`: bearer tokens from the identity provider or API keys become a
//! [`Principal`] in the request extensions; `RequireMfa` guards sensitive routes.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName};
use http::{HeaderMap, Request, Response};
use moka::sync::Cache;
use saas_core::service::{Gate, GateLayer, GateService, PathPrefixes};
use saas_core::telemetry::RequestSpan;
use saas_core::{IntoProblem, Principal, Problem};
use tower::{Layer, Service};

use crate::error::AuthError;
use crate::jwt::{MAX_TOKEN_LEN, Oidc};
use crate::membership::mfa_required;
use crate::users::Users;
use crate::{ApiKeys, Identity};
use std::hash::BuildHasher;

#[derive(Debug)]
struct Cached {
    /// The token itself: a hit must be this exact token, not merely the same hash.
    token: Box<str>,
    principal: Principal,
    identity: Arc<Identity>,
    /// `exp` plus the leeway, in seconds since the epoch.
    valid_until: i64,
}

#[derive(Clone)]
struct Authenticator {
    users: Users,
    oidc: Option<Oidc>,
    api_keys: Option<ApiKeys>,
    api_key_header: Option<HeaderName>,
    anonymous: PathPrefixes,
    optional: bool,
    verified: Cache<u64, Arc<Cached>, foldhash::fast::FixedState>,
    /// Seeded per process, so that nobody can aim tokens at one cache slot.
    hasher: foldhash::quality::RandomState,
}

/// Authenticates every request: a bearer JWT from the identity provider (verified, its
/// subject provisioned as a user) or an API key (`Authorization: Bearer sk_live_…` or a
/// configured header). Puts the [`Principal`] and, for tokens, the [`Identity`] in the
/// request extensions and records `user_id` in the request span.
///
/// | case | answer |
/// |---|---|
/// | no credentials, route not anonymous | 401 `authentication-required` |
/// | wrong scheme, garbage, oversized, `alg: none`, HMAC-signed | 401 `malformed-credentials` / `invalid-token` |
/// | bad signature, unknown key, wrong `iss`/`aud`/`azp`, not yet valid | 401 `invalid-token` |
/// | expired | 401 `token-expired` |
/// | unknown, wrong, revoked or expired API key | 401 `invalid-api-key` |
/// | identity provider or database unreachable | 503 |
///
/// Routes are authenticated unless listed with [`anonymous`](Self::anonymous) (which
/// still verify credentials when some are presented): nothing runs as nobody by accident.
/// Verified tokens are remembered until they expire (at most ten minutes), keyed by
/// a keyed hash and compared in full, so repeated requests cost a hash and a lookup.
#[derive(Clone)]
pub struct AuthenticateLayer {
    inner: Arc<Authenticator>,
}

impl std::fmt::Debug for AuthenticateLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticateLayer")
            .field("oidc", &self.inner.oidc.is_some())
            .field("api_keys", &self.inner.api_keys.is_some())
            .field("anonymous", &self.inner.anonymous)
            .field("optional", &self.inner.optional)
            .finish()
    }
}

impl AuthenticateLayer {
    /// A layer provisioning token subjects through `users`. Add [`oidc`](Self::oidc),
    /// [`api_keys`](Self::api_keys) or both.
    pub fn new(users: Users) -> Self {
        Self {
            inner: Arc::new(Authenticator {
                users,
                oidc: None,
                api_keys: None,
                api_key_header: None,
                anonymous: PathPrefixes::default(),
                optional: false,
                verified: Cache::builder()
                    // 64 MiB of tokens at most.
                    .weigher(|_, v: &Arc<Cached>| u32::try_from(v.token.len() + 256).unwrap_or(u32::MAX))
                    .max_capacity(64 << 20)
                    .time_to_live(Duration::from_secs(600))
                    .build_with_hasher(foldhash::fast::FixedState::default()),
                hasher: foldhash::quality::RandomState::default(),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Authenticator)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// Accepts bearer tokens verified by `oidc`.
    pub fn oidc(self, oidc: Oidc) -> Self {
        self.edit(|a| a.oidc = Some(oidc))
    }

    /// Accepts API keys (recognised by their prefix in a bearer token).
    pub fn api_keys(self, keys: ApiKeys) -> Self {
        self.edit(|a| a.api_keys = Some(keys))
    }

    /// Also reads API keys from `header` (such as `x-api-key`).
    pub fn api_key_header(self, header: HeaderName) -> Self {
        self.edit(|a| a.api_key_header = Some(header))
    }

    /// Path prefixes that may be called without credentials (health, public pages).
    /// Prefixes match whole segments: `/health` opens `/health` and `/health/…`, never
    /// `/healthz-admin`.
    pub fn anonymous<I: IntoIterator<Item = S>, S: Into<String>>(self, prefixes: I) -> Self {
        let list = PathPrefixes::new(prefixes);
        self.edit(|a| a.anonymous = list)
    }

    /// Lets requests without credentials through everywhere (without a principal);
    /// handlers and route layers that need one answer 401. Bad credentials still get 401.
    pub fn optional(self) -> Self {
        self.edit(|a| a.optional = true)
    }

    /// Authenticates the credentials in `headers`: `Ok(None)` when there are none.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Principal>, AuthError> {
        self.inner.authenticate(headers).await.map(|o| o.map(|(p, _)| p))
    }
}

enum Credential<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
}

fn credential<'a>(
    headers: &'a HeaderMap,
    api_key_header: Option<&HeaderName>,
) -> Result<Option<Credential<'a>>, AuthError> {
    if let Some(name) = api_key_header {
        let mut values = headers.get_all(name).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(AuthError::Malformed("more than one API key header"));
            }
            let key = value
                .to_str()
                .map_err(|_| AuthError::Malformed("the API key is not ASCII"))?;
            return Ok(Some(Credential::ApiKey(key.trim())));
        }
    }
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(AuthError::Malformed("more than one Authorization header"));
    }
    if value.len() > MAX_TOKEN_LEN + 16 {
        return Err(AuthError::Malformed("the Authorization header is too long"));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("the Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(AuthError::Malformed("use `Authorization: Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("use `Authorization: Bearer <token>`"));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed("the bearer token is empty"));
    }
    Ok(Some(Credential::Bearer(token)))
}

impl Authenticator {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<(Principal, Option<Arc<Identity>>)>, AuthError> {
        let Some(credential) = credential(headers, self.api_key_header.as_ref())? else {
            return Ok(None);
        };
        let token = match credential {
            Credential::ApiKey(key) => {
                let keys = self.api_keys.as_ref().ok_or(AuthError::InvalidApiKey)?;
                return Ok(Some((keys.authenticate(key).await?, None)));
            }
            Credential::Bearer(token) => token,
        };
        if let Some(keys) = &self.api_keys
            && keys.recognises(token)
        {
            return Ok(Some((keys.authenticate(token).await?, None)));
        }
        let oidc = self
            .oidc
            .as_ref()
            .ok_or(AuthError::Malformed("bearer tokens are not accepted here"))?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("the token is too long"));
        }
        let slot = self.hasher.hash_one(token);
        if let Some(hit) = self.verified.get(&slot)
            && *hit.token == *token
        {
            if hit.valid_until > crate::unix_now() {
                return Ok(Some((hit.principal.clone(), Some(hit.identity.clone()))));
            }
            self.verified.invalidate(&slot);
        }
        let identity = oidc.verify(token).await?;
        let user = self.users.provision(&identity).await?;
        let mut principal = Principal::user(user).with_mfa(identity.mfa);
        if let Some(org) = &identity.org_id {
            principal = principal.with_org(org.clone());
        }
        let leeway = i64::try_from(oidc.leeway_secs()).unwrap_or(0);
        let identity = Arc::new(identity);
        self.verified.insert(
            slot,
            Arc::new(Cached {
                token: token.into(),
                principal: principal.clone(),
                identity: identity.clone(),
                valid_until: identity.expires_at.saturating_add(leeway),
            }),
        );
        Ok(Some((principal, Some(identity))))
    }

    fn is_anonymous(&self, path: &str) -> bool {
        self.optional || self.anonymous.matches(path)
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GateLayer::new(self.clone()).layer(inner)
    }
}

/// The service made by [`AuthenticateLayer`].
pub type Authenticate<S> = GateService<S, AuthenticateLayer>;

impl Gate for AuthenticateLayer {
    async fn admit(&self, parts: &mut http::request::Parts) -> Result<(), Problem> {
        match self.inner.authenticate(&parts.headers).await {
            Ok(Some((principal, identity))) => {
                if let Some(span) = parts.extensions.get::<RequestSpan>() {
                    span.record_user(principal.user_id);
                }
                if let Some(identity) = identity {
                    parts.extensions.insert(identity);
                }
                parts.extensions.insert(principal);
                Ok(())
            }
            Ok(None) if self.inner.is_anonymous(parts.uri.path()) => Ok(()),
            Ok(None) => Err(AuthError::Missing.to_problem()),
            Err(e) => {
                tracing::info!(error = %e, "authentication failed");
                Err(e.to_problem())
            }
        }
    }
}

/// A route layer for sensitive actions: 401 without a principal, 403 `mfa-required`
/// unless the principal used a second factor (API keys never did).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequireMfa;

impl RequireMfa {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for RequireMfa {
    type Service = RequireMfaService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireMfaService { inner }
    }
}

/// The service made by [`RequireMfa`].
#[derive(Debug, Clone)]
pub struct RequireMfaService<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequireMfaService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    ResB: From<Bytes> + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = futures_util::future::Either<std::future::Ready<Result<Response<ResB>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        use futures_util::future::Either;
        match req.extensions().get::<Principal>() {
            None => Either::Left(std::future::ready(Ok(AuthError::Missing.to_problem().into_http()))),
            Some(p) if !p.mfa => Either::Left(std::future::ready(Ok(mfa_required().into_http()))),
            Some(_) => Either::Right(self.inner.call(req)),
        }
    }
}

#[cfg(feature = "axum")]
mod extract {
    use std::sync::Arc;

    use axum::extract::FromRequestParts;
    use http::request::Parts;
    use saas_core::{IntoProblem, Problem};

    use crate::Identity;
    use crate::error::AuthError;

    /// The identity provider's description of the caller (token-authenticated requests).
    impl<S: Send + Sync> FromRequestParts<S> for Identity {
        type Rejection = Problem;
        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
            parts
                .extensions
                .get::<Arc<Identity>>()
                .map(|i| Identity::clone(i))
                .ok_or_else(|| AuthError::Missing.to_problem())
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn credentials_are_parsed_strictly() {
        let mut h = HeaderMap::new();
        assert!(matches!(credential(&h, None), Ok(None)));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(matches!(credential(&h, None), Err(AuthError::Malformed(_))));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer   "));
        assert!(matches!(credential(&h, None), Err(AuthError::Malformed(_))));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer a.b.c"));
        assert!(matches!(credential(&h, None), Ok(Some(Credential::Bearer("a.b.c")))));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer d.e.f"));
        assert!(matches!(credential(&h, None), Err(AuthError::Malformed(_))));
        let name = HeaderName::from_static("x-api-key");
        let mut h = HeaderMap::new();
        h.insert(&name, HeaderValue::from_static("sk_live_x"));
        assert!(matches!(
            credential(&h, Some(&name)),
            Ok(Some(Credential::ApiKey("sk_live_x")))
        ));
    }
}

//! Finding which tenant a request is for.
//!
//! ```
//! use saas_tenancy::resolve::{self, TenantResolver};
//! let resolver = resolve::subdomain("example.com").or(resolve::header("x-tenant-id"));
//! # let _ = resolver;
//! ```

use http::request::Parts;
use saas_core::TenantId;
use saas_core::problem::{IntoProblem, Problem};

use crate::tenant::validate_slug;

/// A reference to a tenant as a request names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TenantRef {
    /// By id.
    Id(TenantId),
    /// By slug.
    Slug(String),
}

impl TenantRef {
    /// Reads an id (a UUID) or a slug; anything else is malformed.
    pub fn parse(value: &str) -> Result<Self, ResolveError> {
        let value = value.trim();
        if let Ok(id) = value.parse::<TenantId>() {
            return Ok(TenantRef::Id(id));
        }
        validate_slug(value)
            .map(|_| TenantRef::Slug(value.to_owned()))
            .map_err(|_| ResolveError::Malformed)
    }
}

/// A tenant claim of the authenticated principal (an organisation id from the identity
/// provider, mapped to a tenant), put in the request extensions by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantClaim(pub TenantRef);

/// The request names a tenant in a way that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The value is neither a tenant id nor a slug. Answered like an unknown tenant.
    #[error("the tenant reference is malformed")]
    Malformed,
    /// Two sources name different tenants.
    #[error("the request names two different tenants")]
    Conflict,
}

impl IntoProblem for ResolveError {
    fn to_problem(&self) -> Problem {
        match self {
            ResolveError::Malformed => crate::layer::tenant_not_found(),
            ResolveError::Conflict => {
                Problem::bad_request("The request names two different tenants.").with_type("tenant-conflict")
            }
        }
    }
}

/// Finds the tenant a request is for. Implemented for closures
/// `Fn(&Parts) -> Result<Option<TenantRef>, ResolveError>`.
pub trait TenantResolver: Clone + Send + Sync + 'static {
    /// The tenant the request names, if any.
    fn resolve(&self, req: &Parts) -> impl Future<Output = Result<Option<TenantRef>, ResolveError>> + Send;

    /// Tries `self`, then `other` when `self` finds nothing.
    fn or<O: TenantResolver>(self, other: O) -> FirstOf<Self, O> {
        FirstOf(self, other)
    }

    /// Asks both; when both name a tenant they must name the same one (in the same form),
    /// otherwise the request is rejected with `tenant-conflict`.
    fn agree<O: TenantResolver>(self, other: O) -> Agree<Self, O> {
        Agree(self, other)
    }
}

impl<F> TenantResolver for F
where
    F: Fn(&Parts) -> Result<Option<TenantRef>, ResolveError> + Clone + Send + Sync + 'static,
{
    async fn resolve(&self, req: &Parts) -> Result<Option<TenantRef>, ResolveError> {
        self(req)
    }
}

/// The first of two resolvers that finds a tenant. See [`TenantResolver::or`].
#[derive(Debug, Clone)]
pub struct FirstOf<A, B>(A, B);

impl<A: TenantResolver, B: TenantResolver> TenantResolver for FirstOf<A, B> {
    async fn resolve(&self, req: &Parts) -> Result<Option<TenantRef>, ResolveError> {
        match self.0.resolve(req).await? {
            Some(t) => Ok(Some(t)),
            None => self.1.resolve(req).await,
        }
    }
}

/// Two resolvers that must agree. See [`TenantResolver::agree`].
#[derive(Debug, Clone)]
pub struct Agree<A, B>(A, B);

impl<A: TenantResolver, B: TenantResolver> TenantResolver for Agree<A, B> {
    async fn resolve(&self, req: &Parts) -> Result<Option<TenantRef>, ResolveError> {
        match (self.0.resolve(req).await?, self.1.resolve(req).await?) {
            (Some(a), Some(b)) if a != b => Err(ResolveError::Conflict),
            (a, b) => Ok(a.or(b)),
        }
    }
}

/// A header carrying a tenant id or slug (`x-tenant-id`).
#[derive(Debug, Clone)]
pub struct Header(http::HeaderName);

/// Resolves from a header holding a tenant id or slug.
pub fn header(name: &'static str) -> Header {
    Header(http::HeaderName::from_static(name))
}

impl TenantResolver for Header {
    async fn resolve(&self, req: &Parts) -> Result<Option<TenantRef>, ResolveError> {
        let mut values = req.headers.get_all(&self.0).iter();
        let Some(value) = values.next() else { return Ok(None) };
        if values.next().is_some() {
            return Err(ResolveError::Conflict);
        }
        let value = value.to_str().map_err(|_| ResolveError::Malformed)?;
        TenantRef::parse(value).map(Some)
    }
}

/// The left-most label of the host under a base domain (`acme.example.com`).
#[derive(Debug, Clone)]
pub struct Subdomain {
    base: String,
}

/// Resolves `{slug}.{base}` from the `Host` header (or the URI's authority).
pub fn subdomain(base: &str) -> Subdomain {
    Subdomain {
        base: base.trim_start_matches('.').to_ascii_lowercase(),
    }
}

impl TenantResolver for Subdomain {
    async fn resolve(&self, req: &Parts) -> Result<Option<TenantRef>, ResolveError> {
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        let Some(host) = host else { return Ok(None) };
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let Some(label) = host.strip_suffix(&self.base).and_then(|h| h.strip_suffix('.')) else {
            return Ok(None);
        };
        if label.contains('.') {
            return Err(ResolveError::Malformed);
        }
        validate_slug(label).map_err(|_| ResolveError::Malformed)?;
        Ok(Some(TenantRef::Slug(label.to_owned())))
    }
}

/// A path prefix naming the tenant (`/t/{slug}/…`).
#[derive(Debug, Clone)]
pub struct PathPrefix {
    prefix: String,
}

/// Resolves `{prefix}{slug or id}/…` from the path (`path_prefix("/t/")`).
pub fn path_prefix(prefix: &str) -> PathPrefix {
    let mut prefix = prefix.to_owned();
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    PathPrefix { prefix }
}

impl TenantResolver for PathPrefix {
    async fn resolve(&self, req: &Parts) -> Result<Option<TenantRef>, ResolveError> {
        let Some(rest) = req.uri.path().strip_prefix(&self.prefix) else {
            return Ok(None);
        };
        let segment = rest.split('/').next().unwrap_or("");
        if segment.is_empty() {
            return Ok(None);
        }
        TenantRef::parse(segment).map(Some)
    }
}

/// The tenant claim of the authenticated principal ([`TenantClaim`] in the extensions).
#[derive(Debug, Clone, Copy)]
pub struct Claim;

/// Resolves from the principal's tenant claim.
pub fn claim() -> Claim {
    Claim
}

impl TenantResolver for Claim {
    async fn resolve(&self, req: &Parts) -> Result<Option<TenantRef>, ResolveError> {
        Ok(req.extensions.get::<TenantClaim>().map(|c| c.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[tokio::test]
    async fn header_takes_ids_and_slugs() {
        let id = TenantId::new();
        let h = header("x-tenant-id");
        let p = parts("/", &[("x-tenant-id", &id.to_string())]);
        assert_eq!(h.resolve(&p).await, Ok(Some(TenantRef::Id(id))));
        let p = parts("/", &[("x-tenant-id", "acme")]);
        assert_eq!(h.resolve(&p).await, Ok(Some(TenantRef::Slug("acme".into()))));
        let p = parts("/", &[("x-tenant-id", "'; drop")]);
        assert_eq!(h.resolve(&p).await, Err(ResolveError::Malformed));
        let p = parts("/", &[("x-tenant-id", "a"), ("x-tenant-id", "b")]);
        assert_eq!(h.resolve(&p).await, Err(ResolveError::Conflict));
        assert_eq!(h.resolve(&parts("/", &[])).await, Ok(None));
    }

    #[tokio::test]
    async fn subdomain_reads_one_label_under_the_base() {
        let s = subdomain("example.com");
        let slug = |host: &str| {
            let p = parts("/", &[("host", host)]);
            let s = s.clone();
            async move { s.resolve(&p).await }
        };
        assert_eq!(slug("acme.example.com").await, Ok(Some(TenantRef::Slug("acme".into()))));
        assert_eq!(
            slug("ACME.Example.com:8443").await,
            Ok(Some(TenantRef::Slug("acme".into())))
        );
        assert_eq!(slug("example.com").await, Ok(None));
        assert_eq!(slug("acme.example.org").await, Ok(None));
        assert_eq!(slug("acmeexample.com").await, Ok(None));
        assert_eq!(slug("a.b.example.com").await, Err(ResolveError::Malformed));
        assert_eq!(slug("-x.example.com").await, Err(ResolveError::Malformed));
    }

    #[tokio::test]
    async fn path_prefix_and_combinators() {
        let p = parts("/t/acme/projects", &[("x-tenant-id", "globex")]);
        assert_eq!(
            path_prefix("/t").resolve(&p).await,
            Ok(Some(TenantRef::Slug("acme".into())))
        );
        assert_eq!(path_prefix("/t/").resolve(&parts("/t/", &[])).await, Ok(None));
        assert_eq!(path_prefix("/t/").resolve(&parts("/other", &[])).await, Ok(None));
        let first = path_prefix("/t/").or(header("x-tenant-id"));
        assert_eq!(first.resolve(&p).await, Ok(Some(TenantRef::Slug("acme".into()))));
        let strict = path_prefix("/t/").agree(header("x-tenant-id"));
        assert_eq!(strict.resolve(&p).await, Err(ResolveError::Conflict));
        let p = parts("/t/acme/projects", &[("x-tenant-id", "acme")]);
        assert_eq!(strict.resolve(&p).await, Ok(Some(TenantRef::Slug("acme".into()))));
        let closure = |_: &Parts| Ok(Some(TenantRef::Slug("fixed".into())));
        assert_eq!(closure.resolve(&p).await, Ok(Some(TenantRef::Slug("fixed".into()))));
    }

    #[tokio::test]
    async fn claim_reads_the_extension() {
        let mut p = parts("/", &[]);
        assert_eq!(claim().resolve(&p).await, Ok(None));
        p.extensions.insert(TenantClaim(TenantRef::Slug("acme".into())));
        assert_eq!(claim().resolve(&p).await, Ok(Some(TenantRef::Slug("acme".into()))));
    }
}

//! `LocalIssuer`: a development identity provider. It generates key pairs, mints tokens
//! with the claims you choose, and serves OpenID discovery and JWKS over real HTTP on a
//! local port, so that development and tests exercise the same verification path as
//! production. Never use it in production: anyone with the process can mint tokens.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use axum::Json;
use axum::extract::State;
use axum::routing::get;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use crate::error::IssuerError;
use crate::jwt::{Issuer, Oidc};

struct LocalKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
    published: bool,
}

struct Inner {
    issuer: String,
    keys: RwLock<Vec<LocalKey>>,
    current: RwLock<String>,
    jwks_requests: AtomicU64,
    next_kid: AtomicU64,
}

/// A development identity provider on `127.0.0.1` (see the module docs).
#[derive(Clone)]
pub struct LocalIssuer {
    inner: Arc<Inner>,
    /// Dropped with the last handle: the server stops.
    _server: Arc<oneshot::Sender<()>>,
}

impl std::fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("issuer", &self.inner.issuer)
            .finish()
    }
}

impl Inner {
    fn new(issuer: String, key: LocalKey) -> Self {
        Inner {
            issuer,
            current: RwLock::new(key.kid.clone()),
            keys: RwLock::new(vec![key]),
            jwks_requests: AtomicU64::new(0),
            next_kid: AtomicU64::new(2),
        }
    }
}

/// The ES256 key `pkcs8` (PKCS#8 DER) as the issuer's first key.
fn es256_from_pkcs8(pkcs8: &[u8]) -> Result<LocalKey, KeyGenError> {
    let fail = || KeyGenError(Algorithm::ES256);
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).map_err(|_| fail())?;
    let encoding = EncodingKey::from_ec_der(pkcs8);
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).map_err(|_| fail())?;
    jwk.common.key_id = Some("local-1".into());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(LocalKey {
        kid: "local-1".into(),
        alg: Algorithm::ES256,
        encoding,
        jwk,
        published: true,
    })
}

/// Generating a key pair (or reading one) failed.
#[derive(Debug, thiserror::Error)]
#[error("a {0:?} key could not be generated or read")]
pub struct KeyGenError(Algorithm);

fn generate(alg: Algorithm, kid: String) -> Result<LocalKey, KeyGenError> {
    let fail = || KeyGenError(alg);
    let rng = SystemRandom::new();
    let encoding = match alg {
        Algorithm::ES256 => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| fail())?;
            EncodingKey::from_ec_der(doc.as_ref())
        }
        Algorithm::EdDSA => {
            let doc = Ed25519KeyPair::generate_pkcs8v1(&rng).map_err(|_| fail())?;
            EncodingKey::from_ed_der(doc.as_ref())
        }
        Algorithm::RS256 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(|_| fail())?;
            let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).map_err(|_| fail())?;
            EncodingKey::from_rsa_der(pkcs1_from_pkcs8(pkcs8.as_ref()).ok_or_else(fail)?)
        }
        other => return Err(KeyGenError(other)),
    };
    let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(|_| fail())?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(LocalKey {
        kid,
        alg,
        encoding,
        jwk,
        published: true,
    })
}

/// Reads one DER TLV: (tag, content, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`.
fn pkcs1_from_pkcs8(der: &[u8]) -> Option<&[u8]> {
    let (0x30, info, _) = der_tlv(der)? else { return None };
    let (0x02, _, rest) = der_tlv(info)? else { return None };
    let (0x30, _, rest) = der_tlv(rest)? else { return None };
    let (0x04, key, _) = der_tlv(rest)? else { return None };
    Some(key)
}

async fn discovery(State(inner): State<Arc<Inner>>) -> Json<Value> {
    Json(json!({
        "issuer": inner.issuer,
        "jwks_uri": format!("{}/.well-known/jwks.json", inner.issuer),
        "id_token_signing_alg_values_supported": ["ES256", "RS256", "EdDSA"],
        "subject_types_supported": ["public"],
        "response_types_supported": ["code"],
    }))
}

async fn jwks(State(inner): State<Arc<Inner>>) -> Json<JwkSet> {
    inner.jwks_requests.fetch_add(1, Ordering::Relaxed);
    let keys = inner
        .keys
        .read()
        .map(|k| k.iter().filter(|k| k.published).map(|k| k.jwk.clone()).collect())
        .unwrap_or_default();
    Json(JwkSet { keys })
}

impl LocalIssuer {
    /// Starts an issuer signing with ES256 on a free local port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(Algorithm::ES256).await
    }

    /// Starts an issuer signing with `alg` (ES256, RS256 or EdDSA).
    pub async fn start_with(alg: Algorithm) -> std::io::Result<Self> {
        let key = generate(alg, "local-1".into()).map_err(std::io::Error::other)?;
        Self::serve(SocketAddr::from(([127, 0, 0, 1], 0)), key).await
    }

    /// Starts an issuer on `addr` signing with the ES256 key `pkcs8` (from
    /// [`generate_es256_pkcs8`](Self::generate_es256_pkcs8)): a development server that
    /// keeps its issuer URL and key across restarts, so that the users it provisioned and
    /// the tokens it minted stay valid. The error says when the port is taken.
    pub async fn start_on(addr: SocketAddr, pkcs8: &[u8]) -> std::io::Result<Self> {
        let key = es256_from_pkcs8(pkcs8).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Self::serve(addr, key).await
    }

    /// An issuer named `issuer` signing with the ES256 key `pkcs8`, serving nothing: mints
    /// tokens that the server started by [`start_on`](Self::start_on) with the same key
    /// at that URL verifies (a command-line token tool, say).
    pub fn offline(issuer: &str, pkcs8: &[u8]) -> Result<Self, KeyGenError> {
        let key = es256_from_pkcs8(pkcs8)?;
        let (tx, _rx) = oneshot::channel();
        Ok(Self {
            inner: Arc::new(Inner::new(issuer.trim_end_matches('/').to_owned(), key)),
            _server: Arc::new(tx),
        })
    }

    /// A new ES256 private key as PKCS#8 DER, for [`start_on`](Self::start_on).
    pub fn generate_es256_pkcs8() -> Result<Vec<u8>, KeyGenError> {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| KeyGenError(Algorithm::ES256))
    }

    async fn serve(addr: SocketAddr, key: LocalKey) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let issuer = format!("http://{addr}");
        let (tx, rx) = oneshot::channel();
        let inner = Arc::new(Inner::new(issuer.clone(), key));
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/.well-known/jwks.json", get(jwks))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        tracing::warn!(
            issuer = %issuer,
            "LocalIssuer is running: a DEVELOPMENT identity provider that signs any token asked of it; never use it in production"
        );
        Ok(Self {
            inner,
            _server: Arc::new(tx),
        })
    }

    /// The issuer identifier (`iss`), also its base URL.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Where its keys are published.
    pub fn jwks_uri(&self) -> String {
        format!("{}/.well-known/jwks.json", self.inner.issuer)
    }

    /// How many times its JWKS was fetched.
    pub fn jwks_requests(&self) -> u64 {
        self.inner.jwks_requests.load(Ordering::Relaxed)
    }

    /// An [`Issuer`] found through this issuer's discovery document.
    pub async fn discover(&self) -> Result<Issuer, IssuerError> {
        Issuer::discover(self.issuer()).await
    }

    /// An [`Oidc`] verifier for this issuer requiring `audience`.
    pub async fn oidc(&self, audience: &str) -> Result<Oidc, IssuerError> {
        Ok(Oidc::new(self.discover().await?).audience(audience))
    }

    /// Adds a key of the same algorithm as the current one; when `publish` is false it is
    /// kept out of the JWKS until [`publish`](Self::publish). Returns its `kid`.
    pub fn add_key(&self, publish: bool) -> Result<String, KeyGenError> {
        let alg = self.current_alg();
        let kid = format!("local-{}", self.inner.next_kid.fetch_add(1, Ordering::Relaxed));
        let mut key = generate(alg, kid.clone())?;
        key.published = publish;
        if let Ok(mut keys) = self.inner.keys.write() {
            keys.push(key);
        }
        Ok(kid)
    }

    /// Rotates: a new published key signs from now on; older keys stay published.
    pub fn rotate(&self) -> Result<String, KeyGenError> {
        let kid = self.add_key(true)?;
        if let Ok(mut current) = self.inner.current.write() {
            current.clone_from(&kid);
        }
        Ok(kid)
    }

    /// Publishes a key added with `publish = false`.
    pub fn publish(&self, kid: &str) {
        if let Ok(mut keys) = self.inner.keys.write() {
            keys.iter_mut()
                .filter(|k| k.kid == kid)
                .for_each(|k| k.published = true);
        }
    }

    /// Stops publishing a key (tokens it signed stop verifying once verifiers refetch).
    pub fn retire(&self, kid: &str) {
        if let Ok(mut keys) = self.inner.keys.write() {
            keys.iter_mut()
                .filter(|k| k.kid == kid)
                .for_each(|k| k.published = false);
        }
    }

    fn current_alg(&self) -> Algorithm {
        let current = self.inner.current.read().map(|c| c.clone()).unwrap_or_default();
        self.inner
            .keys
            .read()
            .ok()
            .and_then(|keys| keys.iter().find(|k| k.kid == current).map(|k| k.alg))
            .unwrap_or(Algorithm::ES256)
    }

    /// Starts a token for `subject`: issuer set, issued now, valid for an hour.
    pub fn token(&self, subject: &str) -> TokenBuilder {
        let now = crate::unix_now();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.inner.issuer));
        claims.insert("sub".into(), json!(subject));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + 3600));
        TokenBuilder {
            issuer: self.clone(),
            claims,
            kid: None,
        }
    }
}

/// A token being minted by a [`LocalIssuer`].
#[derive(Debug, Clone)]
pub struct TokenBuilder {
    issuer: LocalIssuer,
    claims: Map<String, Value>,
    kid: Option<String>,
}

impl TokenBuilder {
    /// Sets `aud`.
    pub fn audience(self, aud: &str) -> Self {
        self.claim("aud", json!(aud))
    }
    /// Sets `email` and `email_verified: true`.
    pub fn email(self, email: &str) -> Self {
        self.claim("email", json!(email)).claim("email_verified", json!(true))
    }
    /// Marks a second factor (`amr: ["pwd", "mfa"]`) or only a password.
    pub fn mfa(self, mfa: bool) -> Self {
        let amr = if mfa { json!(["pwd", "mfa"]) } else { json!(["pwd"]) };
        self.claim("amr", amr)
    }
    /// Expires `secs` seconds from now (negative: already expired).
    pub fn expires_in(self, secs: i64) -> Self {
        let now = crate::unix_now();
        self.claim("exp", json!(now + secs))
    }
    /// Not valid until `secs` seconds from now.
    pub fn not_before_in(self, secs: i64) -> Self {
        let now = crate::unix_now();
        self.claim("nbf", json!(now + secs))
    }
    /// Sets any claim (`iss` too, to mint a token of another issuer).
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.claims.insert(name.into(), value);
        self
    }
    /// Removes a claim.
    pub fn without(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }
    /// Signs with the key `kid` instead of the current one.
    pub fn key(mut self, kid: &str) -> Self {
        self.kid = Some(kid.to_owned());
        self
    }
    /// The signed token (empty when the chosen key does not exist, which no verifier
    /// accepts).
    pub fn sign(self) -> String {
        let inner = &self.issuer.inner;
        let kid = self
            .kid
            .clone()
            .or_else(|| inner.current.read().ok().map(|c| c.clone()))
            .unwrap_or_default();
        let Ok(keys) = inner.keys.read() else {
            return String::new();
        };
        let Some(key) = keys.iter().find(|k| k.kid == kid) else {
            return String::new();
        };
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &self.claims, &key.encoding).unwrap_or_default()
    }
    /// The claims so far.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_key_converts() {
        let key = generate(Algorithm::RS256, "k".into()).unwrap();
        assert_eq!(key.alg, Algorithm::RS256);
        assert!(der_tlv(&[0x30, 0x85, 0, 0, 0, 0, 0]).is_none());
        assert!(pkcs1_from_pkcs8(&[0x30, 0x00]).is_none());
    }
}

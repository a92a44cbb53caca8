//! What authentication costs per request.
//!
//! - `jwt_cold`: full verification of an ES256 token (header, key lookup, signature,
//!   registered claims, claim mapping); `jwt_cold_rs256` the same for RS256.
//! - `jwt_cached`: the layer's path for a token it verified before (keyed hash of the
//!   token, cache lookup, full comparison, principal clone).
//! - `api_key`: the layer's path for a known API key (parse, cache lookup, constant-time
//!   digest comparison, usage mark).
//!
//! Runs against the local PostgreSQL (for provisioning and the key's first lookup) and a
//! `LocalIssuer` over HTTP, like the tests.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use saas_authz::{Algorithm, ApiKeys, AuthenticateLayer, LocalIssuer, Memberships, NewApiKey, Users};
use saas_core::testkit::TestDb;
use saas_core::{Principal, UserId};
use saas_tenancy::TenantTx;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (db, idp, idp_rsa, layer, oidc, oidc_rsa, token, token_rsa, key) = rt.block_on(async {
        let db = TestDb::new(&[&saas_core::MIGRATOR, &saas_tenancy::MIGRATOR, &saas_authz::MIGRATOR])
            .await
            .unwrap();
        let idp = LocalIssuer::start().await.unwrap();
        let idp_rsa = LocalIssuer::start_with(Algorithm::RS256).await.unwrap();
        let oidc = idp.oidc("api").await.unwrap();
        let oidc_rsa = idp_rsa.oidc("api").await.unwrap();
        let keys = ApiKeys::new(db.app().clone());
        let layer = AuthenticateLayer::new(Users::new(db.app().clone()))
            .oidc(oidc.clone())
            .api_keys(keys.clone());
        let token = idp
            .token("auth0|bench")
            .audience("api")
            .email("bench@example.com")
            .mfa(true)
            .sign();
        let token_rsa = idp_rsa
            .token("auth0|bench")
            .audience("api")
            .email("bench@example.com")
            .sign();

        let tenant = saas_tenancy::lifecycle::create(
            db.app(),
            "bench",
            "Bench",
            UserId::new(),
            &saas_core::clock::SystemClock,
        )
        .await
        .unwrap()
        .id;
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        let owner: Principal = layer.authenticate(&headers).await.unwrap().unwrap();
        let memberships = Memberships::new(db.app().clone());
        let mut tx = TenantTx::begin(db.app(), tenant).await.unwrap();
        memberships.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
        let key = keys
            .create(&mut tx, &owner, NewApiKey::new("bench", ["project:read"]))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (
            db,
            idp,
            idp_rsa,
            layer,
            oidc,
            oidc_rsa,
            token,
            token_rsa,
            key.secret.expose().to_owned(),
        )
    });

    let mut g = c.benchmark_group("authenticate");
    g.bench_function("jwt_cold", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(oidc.verify(black_box(&token)).await.unwrap()) })
    });
    g.bench_function("jwt_cold_rs256", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(oidc_rsa.verify(black_box(&token_rsa)).await.unwrap()) })
    });
    let mut jwt_headers = HeaderMap::new();
    jwt_headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    g.bench_function("jwt_cached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(layer.authenticate(black_box(&jwt_headers)).await.unwrap()) })
    });
    let mut key_headers = HeaderMap::new();
    key_headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    g.bench_function("api_key", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(layer.authenticate(black_box(&key_headers)).await.unwrap()) })
    });
    g.finish();
    drop((idp, idp_rsa));
    rt.block_on(async move { drop(db) });
}

criterion_group!(benches, bench);
criterion_main!(benches);

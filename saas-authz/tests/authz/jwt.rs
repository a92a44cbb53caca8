//! Tokens from a real local issuer: every way a token can be wrong gets the right 401.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use saas_authz::{Algorithm, AuthenticateLayer, ClaimPreset, Issuer, IssuerError, LocalIssuer, Oidc, Users};
use serde_json::json;

use crate::{db, get_with, problem_type, send, whoami};

async fn app_for(db: &saas_core::testkit::TestDb, oidc: Oidc) -> axum::Router {
    whoami().layer(AuthenticateLayer::new(Users::new(db.app().clone())).oidc(oidc))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn every_bad_token_gets_the_right_401() {
    let db = db().await;
    let idp = LocalIssuer::start().await.unwrap();
    let app = app_for(&db, idp.oidc("api").await.unwrap()).await;
    let call = |token: String| {
        let app = app.clone();
        async move { send(&app, get_with("/v1/me", &[("authorization", &bearer(&token))])).await }
    };

    let good = idp.token("u1").audience("api").email("u1@example.com").sign();
    let (status, body) = call(good.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["mfa"], false);

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            idp.token("u1").audience("api").expires_in(-120).sign(),
            "token-expired",
        ),
        (
            "not yet valid",
            idp.token("u1").audience("api").not_before_in(600).sign(),
            "invalid-token",
        ),
        (
            "wrong issuer",
            idp.token("u1")
                .audience("api")
                .claim("iss", json!("https://evil.test"))
                .sign(),
            "invalid-token",
        ),
        (
            "wrong audience",
            idp.token("u1").audience("other").sign(),
            "invalid-token",
        ),
        ("no audience", idp.token("u1").sign(), "invalid-token"),
        (
            "no exp",
            idp.token("u1").audience("api").without("exp").sign(),
            "invalid-token",
        ),
        (
            "no sub",
            idp.token("u1").audience("api").without("sub").sign(),
            "invalid-token",
        ),
        ("truncated", good[..good.len() - 10].to_owned(), "invalid-token"),
        ("garbage", "not-a-token".into(), "malformed-credentials"),
        ("three garbage parts", "a.b.c".into(), "malformed-credentials"),
        ("four parts", format!("{good}.x"), "malformed-credentials"),
        ("oversized", "a".repeat(20_000), "malformed-credentials"),
    ];
    for (name, token, expected) in cases {
        let (status, body) = call(token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(problem_type(&body), expected, "{name}: {body}");
    }

    // alg: none, with the real kid and claims, and no signature.
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": "local-1"}).to_string());
    let claims = idp.token("u1").audience("api").claims().clone();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    for token in [format!("{header}.{payload}."), format!("{header}.{payload}.c2ln")] {
        let (status, body) = call(token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "alg none: {body}");
    }

    // HS256 "signed" with the issuer's public key as the HMAC secret.
    let jwks = reqwest::get(idp.jwks_uri()).await.unwrap().text().await.unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some("local-1".into());
    for secret in [jwks.as_bytes().to_vec(), b"local-1".to_vec()] {
        let forged = jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(&secret)).unwrap();
        let (status, body) = call(forged).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "HS256 confusion: {body}");
        assert_eq!(problem_type(&body), "invalid-token");
    }

    // A signature from another key pair with the same kid.
    let impostor = LocalIssuer::start().await.unwrap();
    let forged = impostor
        .token("u1")
        .audience("api")
        .claim("iss", json!(idp.issuer()))
        .sign();
    let (status, body) = call(forged).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem_type(&body), "invalid-token");

    // Wrong schemes and headers.
    for auth in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc"] {
        let (status, body) = send(&app, get_with("/v1/me", &[("authorization", auth)])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth}: {body}");
        assert_eq!(problem_type(&body), "malformed-credentials");
    }
    let (status, body) = send(&app, get_with("/v1/me", &[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem_type(&body), "authentication-required");
}

#[tokio::test]
async fn the_leeway_tolerates_small_skew() {
    let db = db().await;
    let idp = LocalIssuer::start().await.unwrap();
    let app = app_for(&db, idp.oidc("api").await.unwrap().leeway(Duration::from_secs(60))).await;
    let token = idp.token("u1").audience("api").expires_in(-20).not_before_in(20).sign();
    let (status, _) = send(&app, get_with("/v1/me", &[("authorization", &bearer(&token))])).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn rs256_and_eddsa_issuers_verify() {
    let db = db().await;
    for alg in [Algorithm::RS256, Algorithm::EdDSA] {
        let idp = LocalIssuer::start_with(alg).await.unwrap();
        let app = app_for(&db, idp.oidc("api").await.unwrap()).await;
        let token = idp.token("u-rsa-ed").audience("api").sign();
        let (status, body) = send(&app, get_with("/v1/me", &[("authorization", &bearer(&token))])).await;
        assert_eq!(status, StatusCode::OK, "{alg:?}: {body}");
    }
}

#[tokio::test]
async fn authorized_parties_are_an_allow_list() {
    let db = db().await;
    let idp = LocalIssuer::start().await.unwrap();
    let oidc = Oidc::new(idp.discover().await.unwrap())
        .without_audience_check()
        .authorized_parties(["https://app.example.com"])
        .claims(ClaimPreset::Clerk);
    let app = app_for(&db, oidc).await;
    let ok = idp
        .token("user_1")
        .claim("azp", json!("https://app.example.com"))
        .claim("fva", json!([2, 1]))
        .sign();
    let (status, body) = send(&app, get_with("/v1/me", &[("authorization", &bearer(&ok))])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["mfa"], true);
    for bad in [
        idp.token("user_1")
            .claim("azp", json!("https://evil.example.com"))
            .sign(),
        idp.token("user_1").sign(),
    ] {
        let (status, body) = send(&app, get_with("/v1/me", &[("authorization", &bearer(&bad))])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(problem_type(&body), "invalid-token");
    }
}

#[tokio::test]
async fn unknown_kid_then_rotation_and_refetches_are_bounded() {
    let db = db().await;
    let idp = LocalIssuer::start().await.unwrap();
    // Default interval (30 s): random kids cannot make us refetch.
    let strict = app_for(&db, idp.oidc("api").await.unwrap()).await;
    let before = idp.jwks_requests();
    for i in 0..50 {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(format!("random-{i}"));
        let claims = idp.token("u1").audience("api").claims().clone();
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
            URL_SAFE_NO_PAD.encode([7u8; 64])
        );
        let (status, body) = send(&strict, get_with("/v1/me", &[("authorization", &bearer(&token))])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    assert_eq!(idp.jwks_requests(), before, "no refetch inside the interval");

    // A verifier that may refetch at once: a new key is unknown until published.
    let issuer = Issuer::discover(idp.issuer())
        .await
        .unwrap()
        .min_refetch_interval(Duration::ZERO);
    let eager = app_for(&db, Oidc::new(issuer.clone()).audience("api")).await;
    let kid = idp.add_key(false).unwrap();
    let token = idp.token("u1").audience("api").key(&kid).sign();
    let (status, body) = send(&eager, get_with("/v1/me", &[("authorization", &bearer(&token))])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(problem_type(&body), "invalid-token");
    idp.publish(&kid);
    let fetched = issuer.fetch_count();
    let (status, body) = send(&eager, get_with("/v1/me", &[("authorization", &bearer(&token))])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(issuer.fetch_count(), fetched + 1, "one refetch found the rotated key");

    // Rotation: tokens of the old key keep working while it is published.
    let old = idp.token("u1").audience("api").sign();
    idp.rotate().unwrap();
    let new = idp.token("u1").audience("api").sign();
    for t in [old, new] {
        let (status, _) = send(&eager, get_with("/v1/me", &[("authorization", &bearer(&t))])).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn background_refresh_picks_up_retired_keys() {
    let db = db().await;
    let idp = LocalIssuer::start().await.unwrap();
    let issuer = idp.discover().await.unwrap();
    let _refresh = issuer.spawn_refresh(Duration::from_millis(100));
    let app = app_for(&db, Oidc::new(issuer).audience("api")).await;
    let kid = idp.rotate().unwrap();
    idp.retire("local-1");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A token of the retired key (not yet seen, so not cached) no longer verifies.
    let stale = idp.token("u2").audience("api").key("local-1").sign();
    let (status, _) = send(&app, get_with("/v1/me", &[("authorization", &bearer(&stale))])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let fresh = idp.token("u2").audience("api").key(&kid).sign();
    let (status, _) = send(&app, get_with("/v1/me", &[("authorization", &bearer(&fresh))])).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_unreachable_provider_is_503_not_401() {
    let db = db().await;
    let idp = LocalIssuer::start().await.unwrap();
    let issuer = Issuer::discover(idp.issuer())
        .await
        .unwrap()
        .min_refetch_interval(Duration::ZERO);
    let app = app_for(&db, Oidc::new(issuer).audience("api")).await;
    let kid = idp.add_key(true).unwrap();
    let token = idp.token("u1").audience("api").key(&kid).sign();
    drop(idp);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = send(&app, get_with("/v1/me", &[("authorization", &bearer(&token))])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(problem_type(&body), "authentication-unavailable");
}

#[tokio::test]
async fn discovery_must_name_the_same_issuer() {
    // A provider whose discovery document names another issuer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(move || async move {
            axum::Json(json!({"issuer": "https://evil.test", "jwks_uri": format!("http://{addr}/jwks")}))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let err = Issuer::discover(&format!("http://{addr}")).await.unwrap_err();
    assert!(matches!(err, IssuerError::IssuerMismatch { .. }), "{err}");
    let err = Issuer::from_jwks_url("x", &format!("http://{addr}/missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, IssuerError::Fetch { .. }), "{err}");
}

#[tokio::test]
async fn users_are_provisioned_once_and_kept_in_sync() {
    let db = db().await;
    let idp = LocalIssuer::start().await.unwrap();
    let app = app_for(&db, idp.oidc("api").await.unwrap()).await;
    let t1 = idp
        .token("auth0|42")
        .audience("api")
        .email("Old@Example.com")
        .mfa(true)
        .sign();
    let (_, first) = send(&app, get_with("/v1/me", &[("authorization", &bearer(&t1))])).await;
    assert_eq!(first["mfa"], true);
    let t2 = idp
        .token("auth0|42")
        .audience("api")
        .email("new@example.com")
        .expires_in(1800)
        .sign();
    let (_, second) = send(&app, get_with("/v1/me", &[("authorization", &bearer(&t2))])).await;
    assert_eq!(first["user"], second["user"], "the same subject is the same user");
    assert_eq!(second["mfa"], false);
    let (count, email): (i64, String) =
        sqlx::query_as("SELECT count(*) OVER (), email FROM saas.users WHERE subject = 'auth0|42'")
            .fetch_one(db.platform())
            .await
            .unwrap();
    assert_eq!((count, email.as_str()), (1, "new@example.com"));
}

#[tokio::test]
async fn anonymous_routes_are_explicit() {
    let db = db().await;
    let idp = LocalIssuer::start().await.unwrap();
    let app = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(|| async { axum::Json(json!({"ok": true})) }),
        )
        .merge(whoami())
        .layer(
            AuthenticateLayer::new(Users::new(db.app().clone()))
                .oidc(idp.oidc("api").await.unwrap())
                .anonymous(["/health"]),
        );
    assert_eq!(send(&app, get_with("/health", &[])).await.0, StatusCode::OK);
    assert_eq!(send(&app, get_with("/v1/me", &[])).await.0, StatusCode::UNAUTHORIZED);
    // Bad credentials on an anonymous route are still refused.
    let (status, _) = send(&app, get_with("/health", &[("authorization", "Bearer junk")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_persistent_local_issuer_keeps_its_url_and_key_across_restarts() {
    let db = db().await;
    let key = LocalIssuer::generate_es256_pkcs8().unwrap();
    let first = LocalIssuer::start_on(([127, 0, 0, 1], 0).into(), &key).await.unwrap();
    let addr: std::net::SocketAddr = first.issuer().trim_start_matches("http://").parse().unwrap();
    // A command-line tool mints with the same key, without serving anything.
    let offline = LocalIssuer::offline(first.issuer(), &key).unwrap();
    let minted = offline.token("u1").audience("api").email("u1@example.com").sign();
    drop(first);

    // "Restarted" on the same address with the same key: the old token still verifies.
    let mut again = None;
    for _ in 0..50 {
        match LocalIssuer::start_on(addr, &key).await {
            Ok(issuer) => {
                again = Some(issuer);
                break;
            }
            // The first server's socket closes asynchronously.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let again = again.expect("the address frees up");
    assert_eq!(again.issuer(), offline.issuer());
    let app = app_for(&db, again.oidc("api").await.unwrap()).await;
    let (status, body) = send(&app, get_with("/v1/me", &[("authorization", &bearer(&minted))])).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A different key at the same URL: refused.
    let other = LocalIssuer::offline(again.issuer(), &LocalIssuer::generate_es256_pkcs8().unwrap()).unwrap();
    let forged = other.token("u1").audience("api").sign();
    let (status, _) = send(&app, get_with("/v1/me", &[("authorization", &bearer(&forged))])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Not a key at all.
    assert!(LocalIssuer::offline("http://127.0.0.1:1", b"not a key").is_err());
    assert!(
        LocalIssuer::start_on(([127, 0, 0, 1], 0).into(), b"not a key")
            .await
            .is_err()
    );
}

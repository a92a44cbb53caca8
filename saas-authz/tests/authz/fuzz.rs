//! Property tests over the parsing paths: headers and tokens of any shape get a 401 (or
//! pass as the right principal), never a panic or a 5xx.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use proptest::prelude::*;
use saas_authz::{ApiKeys, AuthenticateLayer, LocalIssuer, Users};

use crate::{db, get_with, send, whoami};

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
        "[A-Za-z0-9_=+/.-]{0,80}",
        Just(URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)),
        Just(URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"local-1"}"#)),
        Just(URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"local-1"}"#)),
    ]
}

fn credential() -> impl Strategy<Value = String> {
    prop_oneof![
        (segment(), segment(), segment()).prop_map(|(a, b, c)| format!("Bearer {a}.{b}.{c}")),
        segment().prop_map(|s| format!("Bearer sk_live_{s}")),
        "[ -~]{0,300}",
        proptest::collection::vec(any::<u8>(), 64)
            .prop_map(|b| format!("Bearer sk_live_{}", URL_SAFE_NO_PAD.encode(b))),
    ]
}

#[test]
fn arbitrary_credentials_never_panic_or_pass() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (app, _db, _idp) = rt.block_on(async {
        let db = db().await;
        let idp = LocalIssuer::start().await.unwrap();
        let app = whoami().layer(
            AuthenticateLayer::new(Users::new(db.app().clone()))
                .oidc(idp.oidc("api").await.unwrap())
                .api_keys(ApiKeys::new(db.app().clone())),
        );
        (app, db, idp)
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(300));
    runner
        .run(&credential(), |auth| {
            let Ok(value) = http::HeaderValue::from_str(&auth) else {
                return Ok(());
            };
            let req = http::Request::get("/v1/me")
                .header("authorization", value)
                .body(axum::body::Body::empty())
                .unwrap();
            let (status, body) = rt.block_on(send(&app, req));
            prop_assert_eq!(status, StatusCode::UNAUTHORIZED, "{} -> {}", auth, body);
            prop_assert!(
                body["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("urn:saas-kit:problem:"))
            );
            Ok(())
        })
        .unwrap();
    let _ = get_with;
}

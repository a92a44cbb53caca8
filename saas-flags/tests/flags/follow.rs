use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use saas_flags::unleash::Follower;
use saas_flags::{Context, Engine, FlagSet};

#[derive(Clone, Default)]
struct Server {
    version: Arc<AtomicUsize>,
    not_modified: Arc<AtomicUsize>,
    unauthorized: Arc<AtomicUsize>,
}

async fn features(
    axum::extract::State(s): axum::extract::State<Server>,
    headers: HeaderMap,
) -> axum::response::Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("default:production.secret") {
        s.unauthorized.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let v = s.version.load(Ordering::SeqCst);
    let etag = format!("\"v{v}\"");
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        s.not_modified.fetch_add(1, Ordering::SeqCst);
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let rollout = if v == 0 { 0 } else { 100 };
    let body = format!(
        r#"{{"version":2,"features":[{{"name":"follow-me","enabled":true,"strategies":[{{"name":"flexibleRollout","parameters":{{"rollout":"{rollout}","stickiness":"default","groupId":"follow-me"}}}}]}}]}}"#
    );
    ([("etag", etag), ("content-type", "application/json".into())], body).into_response()
}

#[tokio::test]
async fn follows_an_unleash_server_with_etags() {
    let server = Server::default();
    let app = Router::new()
        .route("/api/client/features", get(features))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let base = format!("http://{addr}");

    let engine = Engine::new(FlagSet::empty("unleash"));
    let ctx = Context::new().user_id("42");
    let follower = Follower::new(&base, "default:production.secret").app_name("test");
    assert!(follower.poll(&engine).await.unwrap());
    assert!(!engine.is_enabled("follow-me", &ctx));
    assert!(!follower.poll(&engine).await.unwrap(), "unchanged: 304");
    assert_eq!(server.not_modified.load(Ordering::SeqCst), 1);

    server.version.store(1, Ordering::SeqCst);
    assert!(follower.poll(&engine).await.unwrap());
    assert!(engine.is_enabled("follow-me", &ctx));

    // A wrong token is an error, and the last flags stay.
    let wrong = Follower::new(&base, "nope");
    assert!(wrong.poll(&engine).await.is_err());
    assert!(engine.is_enabled("follow-me", &ctx));
    assert_eq!(server.unauthorized.load(Ordering::SeqCst), 1);
}

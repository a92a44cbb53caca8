use axum::Router;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use saas_core::audit::Actor;
use saas_core::{Principal, TenantId, UserId};
use saas_flags::{
    FlagAdmin, FlagDefinition, FlagStore, Flags, FlagsLayer, Plan, Reason, RequireFlag, Strategy, Variant,
};
use saas_tenancy::PlatformPool;
use tower::ServiceExt;

use crate::db;

async fn handler(flags: Flags) -> String {
    let v = flags.variant("banner");
    format!("{} {}", flags.is_enabled("new-search"), v.name)
}

#[tokio::test]
async fn flags_layer_binds_the_request_context_and_require_flag_hides_routes() {
    let db = db().await;
    let admin = FlagAdmin::new(PlatformPool::new(db.platform().clone()));
    let actor = Actor::System("test".into());
    let beta = TenantId::new();
    admin
        .create(
            &actor,
            FlagDefinition::new("new-search")
                .enable_in("production", vec![])
                .plans(["pro"])
                .tenant_override(beta, true),
        )
        .await
        .unwrap();
    admin
        .create(
            &actor,
            FlagDefinition::new("banner")
                .enable_in("production", vec![Strategy::new("default")])
                .variant(Variant::new("blue", 1000).payload("string", "#00f")),
        )
        .await
        .unwrap();
    let store = FlagStore::builder(db.app().clone(), "production")
        .listen(false)
        .load()
        .await
        .unwrap();

    let app = Router::new()
        .route("/search", get(handler).route_layer(RequireFlag::new("new-search")))
        .route("/open", get(handler))
        .route(
            "/unreleased",
            get(|| async { "hidden" }).route_layer(RequireFlag::new("not-defined")),
        )
        .layer(FlagsLayer::new(store.clone()).enrich(|parts, ctx| {
            if let Some(v) = parts.headers.get("x-app-version").and_then(|v| v.to_str().ok()) {
                ctx.set_property("appVersion", v);
            }
        }));

    let call = |path: &str, tenant: Option<TenantId>, plan: Option<&str>| {
        let mut req = Request::get(path)
            .header("x-app-version", "1.2.3")
            .body(axum::body::Body::empty())
            .unwrap();
        req.extensions_mut().insert(Principal::user(UserId::new()));
        if let Some(t) = tenant {
            req.extensions_mut().insert(t);
        }
        if let Some(p) = plan {
            req.extensions_mut().insert(Plan(p.into()));
        }
        app.clone().oneshot(req)
    };
    let body = |res: http::Response<axum::body::Body>| async move {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };

    let res = call("/search", Some(TenantId::new()), Some("pro")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await, "true blue");
    // Another plan: the route does not exist, as a problem document.
    let res = call("/search", Some(TenantId::new()), Some("free")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    // The beta tenant has it on any plan.
    let res = call("/search", Some(beta), Some("free")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Handlers still see the flag's value when the route is open.
    let res = call("/open", Some(TenantId::new()), None).await.unwrap();
    assert_eq!(body(res).await, "false blue");
    // An unknown flag hides its route.
    assert_eq!(
        call("/unreleased", None, None).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // The context the layer built.
    let parts = {
        let mut req = Request::get("/").body(()).unwrap();
        req.extensions_mut().insert(beta);
        req.extensions_mut().insert(Plan("pro".into()));
        req.into_parts().0
    };
    let ctx = FlagsLayer::new(store.clone()).context(&parts);
    assert_eq!(ctx.get("tenantId"), Some(beta.to_string().as_str()));
    assert_eq!(ctx.get("plan"), Some("pro"));
    assert_eq!(ctx.get("environment"), Some("production"));
    assert_eq!(
        store.snapshot().evaluate("new-search", &ctx).reason,
        Reason::TenantOverride
    );

    // Without FlagsLayer, RequireFlag answers 500 (a wiring mistake), never 200.
    let bare = Router::new().route("/x", get(|| async { "x" }).route_layer(RequireFlag::new("new-search")));
    let res = bare
        .oneshot(Request::get("/x").body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

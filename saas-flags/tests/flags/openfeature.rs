use open_feature::{EvaluationContext, EvaluationReason, OpenFeature};
use saas_core::audit::Actor;
use saas_flags::openfeature::SaasFlagsProvider;
use saas_flags::{FlagAdmin, FlagDefinition, FlagStore, Strategy, Variant};
use saas_tenancy::PlatformPool;

use crate::db;

#[tokio::test]
async fn openfeature_clients_evaluate_with_saas_flags() {
    let db = db().await;
    let admin = FlagAdmin::new(PlatformPool::new(db.platform().clone()));
    let actor = Actor::System("test".into());
    admin
        .create(&actor, FlagDefinition::new("on").enable_in("production", vec![]))
        .await
        .unwrap();
    admin
        .create(
            &actor,
            FlagDefinition::new("limits")
                .enable_in("production", vec![Strategy::new("default")])
                .variant(Variant::new("big", 1000).payload("json", r#"{"max":100}"#)),
        )
        .await
        .unwrap();
    admin
        .create(
            &actor,
            FlagDefinition::new("timeout")
                .enable_in("production", vec![])
                .variant(Variant::new("fast", 1000).payload("number", "250")),
        )
        .await
        .unwrap();
    let store = FlagStore::builder(db.app().clone(), "production")
        .listen(false)
        .load()
        .await
        .unwrap();

    let mut api = OpenFeature::singleton_mut().await;
    api.set_provider(SaasFlagsProvider::new(store)).await;
    let client = api.create_client();
    drop(api);
    let ctx = EvaluationContext::default()
        .with_targeting_key("user-1")
        .with_custom_field("plan", "pro");

    assert!(client.get_bool_value("on", Some(&ctx), None).await.unwrap());
    let d = client.get_bool_details("on", Some(&ctx), None).await.unwrap();
    assert_eq!(d.reason, Some(EvaluationReason::Static));
    assert_eq!(client.get_int_value("timeout", Some(&ctx), None).await.unwrap(), 250);
    let st = client
        .get_struct_value::<open_feature::StructValue>("limits", Some(&ctx), None)
        .await
        .unwrap();
    assert_eq!(st.fields["max"], open_feature::Value::Int(100));
    let missing = client.get_bool_details("missing", Some(&ctx), None).await;
    assert!(
        missing.is_err(),
        "an unknown flag is an error (the caller's default applies)"
    );
    // A string asked of a flag without variants: the default applies.
    assert!(client.get_string_value("on", Some(&ctx), None).await.is_err());
}

//! Flag evaluation: saas-flags against unleash-yggdrasil (Unleash's own Rust engine) on
//! identical definitions and contexts.
//!
//! Both engines get the same Unleash client payload; each case evaluates one flag for 16
//! contexts in turn, through each engine's shared-state API (an atomic load of the
//! current set, a name lookup, the evaluation). The engines are first checked to agree
//! on every case and context. `no_strategy/hash_probe` is the floor: a bare hash-map
//! probe by flag name; `no_strategy/saas_flags_request_snapshot` evaluates on a snapshot
//! held for the request, as the `Flags` extractor does.
//!
//! ```text
//! cargo bench -p saas-flags --bench eval
//! ```
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../../benches/interleave.rs"]
mod interleave;
use saas_flags::Engine;
use saas_flags::unleash::ClientFeatures;
use unleash_yggdrasil::{Context as YContext, EngineState};

const PAYLOAD: &str = r##"{
  "version": 2,
  "features": [
    { "name": "no_strategy", "enabled": true, "strategies": [] },
    { "name": "one_constraint", "enabled": true, "strategies": [
        { "name": "default", "constraints": [
            { "contextName": "userId", "operator": "IN", "values": ["user-1003", "user-1007", "user-1011"] } ] } ] },
    { "name": "two_constraints", "enabled": true, "strategies": [
        { "name": "default", "constraints": [
            { "contextName": "userId", "operator": "NOT_IN", "values": ["user-1002", "user-1009"] },
            { "contextName": "plan", "operator": "IN", "values": ["pro", "enterprise"] } ] } ] },
    { "name": "rollout_50", "enabled": true, "strategies": [
        { "name": "flexibleRollout", "parameters": { "rollout": "50", "stickiness": "default", "groupId": "rollout_50" } } ] },
    { "name": "variants", "enabled": true, "strategies": [ { "name": "default" } ],
      "variants": [
        { "name": "red", "weight": 333, "stickiness": "default", "payload": { "type": "string", "value": "#f00" } },
        { "name": "green", "weight": 333, "stickiness": "default", "payload": { "type": "string", "value": "#0f0" } },
        { "name": "blue", "weight": 334, "stickiness": "default", "payload": { "type": "string", "value": "#00f" } } ] }
  ]
}"##;

const CASES: [&str; 5] = [
    "no_strategy",
    "one_constraint",
    "two_constraints",
    "rollout_50",
    "variants",
];
const PLANS: [&str; 4] = ["free", "pro", "team", "enterprise"];

fn contexts() -> (Vec<saas_flags::Context>, Vec<YContext>) {
    (0..16)
        .map(|i| {
            let user = format!("user-{}", 1000 + i);
            let plan = PLANS[i % 4];
            let ours = saas_flags::Context::new().user_id(&user).plan(plan).app_name("bench");
            let theirs = YContext {
                user_id: Some(user),
                app_name: Some("bench".into()),
                properties: Some(HashMap::from([("plan".to_owned(), plan.to_owned())])),
                ..YContext::default()
            };
            (ours, theirs)
        })
        .unzip()
}

fn flag_eval(c: &mut Criterion) {
    let payload = ClientFeatures::from_json(PAYLOAD.as_bytes()).unwrap();
    let ours = Engine::from_unleash(payload);
    let theirs = EngineState::default();
    let warnings = theirs.take_state(unleash_yggdrasil::UpdateMessage::FullResponse(
        serde_json::from_str(PAYLOAD).unwrap(),
    ));
    assert!(warnings.is_none(), "yggdrasil refused the payload: {warnings:?}");
    let (our_ctx, their_ctx) = contexts();

    for name in CASES {
        for (a, b) in our_ctx.iter().zip(&their_ctx) {
            assert_eq!(
                ours.is_enabled(name, a),
                theirs.is_enabled(name, b, &None),
                "{name} {a:?}"
            );
            let v = theirs.get_variant(name, b, &None);
            assert_eq!(ours.load().variant(name, a).name, v.name, "{name} {a:?}");
        }
    }

    // The ratios the goals are about, from interleaved blocks (criterion's separate
    // estimates below are taken seconds apart, and this machine drifts in between).
    let bare: HashMap<String, bool, foldhash::fast::FixedState> =
        CASES.iter().map(|n| ((*n).to_owned(), true)).collect();
    let (mut i, mut j) = (0usize, 0usize);
    let r = interleave::ratio(
        41,
        200_000,
        || {
            i = (i + 1) & 15;
            black_box(ours.is_enabled(black_box("no_strategy"), &our_ctx[i]));
        },
        || {
            j = (j + 1) & 15;
            black_box(bare.get(black_box("no_strategy")).copied().unwrap_or(false));
        },
    );
    println!("flags_probe_ratio/no_strategy={r}");
    for name in CASES {
        let variants = name == "variants";
        let (mut i, mut j) = (0usize, 0usize);
        let r = interleave::ratio(
            41,
            100_000,
            || {
                i = (i + 1) & 15;
                let ctx = &their_ctx[i];
                if variants {
                    black_box(theirs.get_variant(black_box(name), ctx, &None).name.len());
                } else {
                    black_box(theirs.is_enabled(black_box(name), ctx, &None));
                }
            },
            || {
                j = (j + 1) & 15;
                let ctx = &our_ctx[j];
                if variants {
                    black_box(ours.with_current(|set| set.variant(black_box(name), ctx).name.len()));
                } else {
                    black_box(ours.is_enabled(black_box(name), ctx));
                }
            },
        );
        println!("flags_yggdrasil_ratio/{name}={r}");
    }

    let mut group = c.benchmark_group("flag_eval");
    // The floor for a flag without strategies: one probe of a hash map by flag name
    // (foldhash), returning a stored bool.
    group.bench_function("no_strategy/hash_probe", |b| {
        b.iter(|| usize::from(bare.get(black_box("no_strategy")).copied().unwrap_or(false)))
    });
    // What a request pays: its `Flags` handle holds one snapshot for all its evaluations.
    let snapshot = ours.snapshot();
    group.bench_function("no_strategy/saas_flags_request_snapshot", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 15;
            usize::from(snapshot.is_enabled(black_box("no_strategy"), &our_ctx[i]))
        })
    });
    for name in CASES {
        let variants = name == "variants";
        group.bench_function(format!("{name}/saas_flags"), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 15;
                let ctx = &our_ctx[i];
                if variants {
                    black_box(ours.with_current(|set| set.variant(black_box(name), ctx).name.len()))
                } else {
                    usize::from(ours.is_enabled(black_box(name), ctx))
                }
            })
        });
        group.bench_function(format!("{name}/yggdrasil"), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 15;
                let ctx = &their_ctx[i];
                if variants {
                    black_box(theirs.get_variant(black_box(name), ctx, &None).name.len())
                } else {
                    usize::from(theirs.is_enabled(black_box(name), ctx, &None))
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, flag_eval);
criterion_main!(benches);

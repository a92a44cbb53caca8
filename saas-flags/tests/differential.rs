//! Differential test against unleash-yggdrasil, Unleash's own Rust engine: randomly
//! generated flags (every strategy, operator, segments, variants with overrides and
//! stickiness, strategy variants, dependencies, tenant overrides and plans) and contexts,
//! fixed seed, well over 100,000 evaluations; `is_enabled` and the variant must agree.
//!
//! Our side evaluates the definitions directly and also through the Unleash payload they
//! export to (the import path); yggdrasil evaluates the exported payload. Randomness is
//! kept out: every context has a user or session id and a current time, and variant
//! stickiness only names fields every context has.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;

use saas_core::TenantId;
use saas_flags::unleash::ClientFeatures;
use saas_flags::{
    Constraint, Context, Dependency, FlagDefinition, FlagSetBuilder, Mode, Segment, Strategy, Variant, Versioned,
};
use unleash_yggdrasil::{Context as YContext, EngineState, UpdateMessage};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn some<T: Clone>(&mut self, xs: &[T], max: usize) -> Vec<T> {
        (0..1 + self.below(max)).map(|_| self.pick(xs).clone()).collect()
    }
}

const ENV: &str = "production";
const USERS: [&str; 8] = [
    "1",
    "7",
    "42",
    "user-1003",
    "user-1007",
    "Alice",
    "alice",
    "0190f3a4-7c2e-7d41-9b1a-3c5d6e7f8091",
];
const SESSIONS: [&str; 4] = ["s1", "s2", "session-abc", "9"];
const APPS: [&str; 3] = ["web", "mobile", "Web-Admin"];
const ENVS: [&str; 3] = ["production", "staging", "dev"];
const PLANS: [&str; 4] = ["free", "pro", "team", "enterprise"];
const REGIONS: [&str; 4] = ["eu-west-1", "us-east-1", "EU-central", "ap-south"];
const IPS: [&str; 6] = [
    "10.0.0.1",
    "10.1.2.3",
    "192.168.1.20",
    "172.16.5.4",
    "2001:db8::1",
    "not-an-ip",
];
const CIDRS: [&str; 7] = [
    "10.0.0.0/8",
    "192.168.1.0/24",
    "172.16.5.4",
    "2001:db8::/32",
    "10.1.2.3/32",
    "junk",
    "300.1.1.1",
];
const VERSIONS: [&str; 7] = ["1.0.0", "1.2.3", "2.0.0-beta.1", "2.0.0", "1.10.0", "0.9.9", "1.2"];
const SCORES: [&str; 6] = ["1", "5", "10.5", "-3", "1e2", "abc"];
const TIMES: [&str; 4] = [
    "2024-01-01T00:00:00Z",
    "2024-06-15T12:00:00Z",
    "2025-03-01T08:30:00.000Z",
    "2023-12-31T23:59:59+01:00",
];
const REGEXES: [&str; 5] = ["^user-10", "ice$", "^[0-9]+$", "eu-.*", "(?:pro|team)"];
const FIELDS: [&str; 10] = [
    "userId",
    "sessionId",
    "appName",
    "environment",
    "remoteAddress",
    "plan",
    "region",
    "tenantId",
    "appVersion",
    "score",
];

fn tenants() -> Vec<TenantId> {
    (0..4)
        .map(|i| TenantId::from_uuid(uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + i)))
        .collect()
}

fn values_for(field: &str, rng: &mut Rng, tenants: &[TenantId]) -> Vec<String> {
    let pool: Vec<String> = match field {
        "userId" => USERS.iter().map(|s| s.to_string()).collect(),
        "sessionId" => SESSIONS.iter().map(|s| s.to_string()).collect(),
        "appName" => APPS.iter().map(|s| s.to_string()).collect(),
        "environment" => ENVS.iter().map(|s| s.to_string()).collect(),
        "remoteAddress" => IPS.iter().map(|s| s.to_string()).collect(),
        "plan" => PLANS.iter().map(|s| s.to_string()).collect(),
        "region" => REGIONS.iter().map(|s| s.to_string()).collect(),
        "tenantId" => tenants.iter().map(|t| t.to_string()).collect(),
        "appVersion" => VERSIONS.iter().map(|s| s.to_string()).collect(),
        _ => SCORES.iter().map(|s| s.to_string()).collect(),
    };
    rng.some(&pool, 4)
}

fn constraint(rng: &mut Rng, tenants: &[TenantId]) -> Constraint {
    let field = *rng.pick(&FIELDS);
    let mut c = match rng.below(9) {
        0 | 1 => Constraint::new(field, "IN", values_for(field, rng, tenants)),
        2 => Constraint::new(field, "NOT_IN", values_for(field, rng, tenants)),
        3 => {
            let op = *rng.pick(&["STR_CONTAINS", "STR_STARTS_WITH", "STR_ENDS_WITH"]);
            let vals: Vec<String> = values_for(field, rng, tenants)
                .into_iter()
                .map(|v| {
                    let n = v.chars().count();
                    let (a, b) = (rng.below(n.max(1)), rng.below(n.max(1)));
                    v.chars().skip(a.min(b)).take(a.max(b) - a.min(b) + 1).collect()
                })
                .collect();
            Constraint::new(field, op, vals)
        }
        4 => {
            let op = *rng.pick(&["NUM_EQ", "NUM_GT", "NUM_GTE", "NUM_LT", "NUM_LTE"]);
            Constraint::single("score", op, *rng.pick(&["1", "5", "10.5", "-3", "100", "0"]))
        }
        5 => {
            let op = *rng.pick(&["DATE_AFTER", "DATE_BEFORE"]);
            Constraint::single("currentTime", op, *rng.pick(&TIMES))
        }
        6 => {
            let op = *rng.pick(&["SEMVER_EQ", "SEMVER_GT", "SEMVER_LT"]);
            Constraint::single(
                "appVersion",
                op,
                *rng.pick(&["1.2.3", "2.0.0", "2.0.0-beta.1", "1.10.0", "v1.0.0"]),
            )
        }
        7 => Constraint::single(field, "REGEX", *rng.pick(&REGEXES)),
        _ => Constraint::new(
            "remoteAddress",
            "IN_CIDR",
            rng.some(&CIDRS, 3).into_iter().map(String::from),
        ),
    };
    c.inverted = rng.chance(25);
    c.case_insensitive = rng.chance(30);
    c
}

fn variants(rng: &mut Rng, tenants: &[TenantId], flag_level: bool) -> Vec<Variant> {
    let n = 1 + rng.below(4);
    let stick = *rng.pick(&["default", "tenantId", "plan"]);
    (0..n)
        .map(|i| {
            let mut v = Variant::new(format!("v{i}"), *rng.pick(&[0, 1, 33, 100, 250, 500]) + 1);
            if flag_level {
                v.stickiness = Some(stick.to_owned());
                if rng.chance(20) {
                    let field = *rng.pick(&["userId", "plan", "tenantId"]);
                    v.overrides.push(saas_flags::model::Override {
                        context_name: field.into(),
                        values: values_for(field, rng, tenants),
                    });
                }
            }
            if rng.chance(70) {
                v = v.payload("string", format!("payload-{i}"));
            }
            v
        })
        .collect()
}

fn strategy(rng: &mut Rng, flag: &str, tenants: &[TenantId], segments: usize) -> Strategy {
    let group = if rng.chance(80) {
        format!("g-{}", rng.below(5))
    } else {
        flag.to_owned()
    };
    let mut s = match rng.below(7) {
        0 => Strategy::new("default"),
        1 => Strategy::new("userWithId").param("userIds", rng.some(&USERS, 3).join(", ")),
        2 | 3 => {
            // "random" stickiness and the default's random fallback are left out (see top).
            let stick = *rng.pick(&["default", "userId", "sessionId", "tenantId", "plan", "region"]);
            Strategy::rollout(*rng.pick(&[0, 1, 10, 25, 50, 75, 99, 100]), stick, group.clone())
        }
        4 => Strategy::new(*rng.pick(&["gradualRolloutUserId", "gradualRolloutSessionId"]))
            .param("percentage", rng.pick(&["0", "30", "50", "100"]).to_string())
            .param("groupId", group.clone()),
        5 => Strategy::new("remoteAddress").param("IPs", rng.some(&CIDRS, 3).join(", ")),
        _ => Strategy::new("gradualRolloutRandom").param("percentage", rng.pick(&["0", "100"]).to_string()),
    };
    for _ in 0..rng.below(3) {
        s.constraints.push(constraint(rng, tenants));
    }
    if segments > 0 && rng.chance(20) {
        s.segments.push(rng.below(segments) as i32);
    }
    if rng.chance(25) {
        // Strategy variants follow the strategy's stickiness; keep it deterministic.
        if !matches!(
            s.parameters.get("stickiness").map(String::as_str),
            Some("region" | "sessionId")
        ) {
            s.variants = variants(rng, tenants, false);
        }
    }
    s
}

fn flags(rng: &mut Rng, tenants: &[TenantId], n: usize, segments: usize) -> Vec<FlagDefinition> {
    let mut out: Vec<FlagDefinition> = Vec::new();
    for i in 0..n {
        let name = format!("flag-{i}");
        let strategies = (0..rng.below(4))
            .map(|_| strategy(rng, &name, tenants, segments))
            .collect();
        let mut d = FlagDefinition::new(name.clone());
        d.environments.insert(
            ENV.into(),
            saas_flags::EnvironmentConfig {
                enabled: rng.chance(90),
                strategies,
            },
        );
        if rng.chance(40) {
            d.variants = variants(rng, tenants, true);
        }
        // Parents: earlier flags without parents of their own.
        if i > 0 && rng.chance(20) {
            let p = rng.below(i);
            if out[p].dependencies.is_empty() {
                let enabled = if rng.chance(70) { None } else { Some(rng.chance(50)) };
                let variants = if enabled != Some(false) && rng.chance(30) {
                    Some(if out[p].variants.is_empty() {
                        vec![]
                    } else {
                        vec![out[p].variants[0].name.clone()]
                    })
                } else {
                    None
                };
                d.dependencies.push(Dependency {
                    feature: out[p].name.clone(),
                    enabled,
                    variants,
                });
            }
        }
        if rng.chance(20) {
            for t in tenants {
                if rng.chance(30) {
                    d.tenant_overrides.insert(*t, rng.chance(50));
                }
            }
        }
        if rng.chance(20) {
            d.plans = rng.some(&PLANS, 2).into_iter().map(String::from).collect();
        }
        out.push(d);
    }
    out
}

fn contexts(rng: &mut Rng, tenants: &[TenantId], n: usize) -> Vec<(Context, YContext)> {
    (0..n)
        .map(|_| {
            let mut ours = Context::new();
            let mut theirs = YContext::default();
            let mut props = HashMap::new();
            let user = rng.chance(85).then(|| rng.pick(&USERS).to_string());
            let session = (user.is_none() || rng.chance(30)).then(|| rng.pick(&SESSIONS).to_string());
            if let Some(u) = &user {
                ours = ours.user_id(u);
                theirs.user_id = Some(u.clone());
            }
            if let Some(s) = &session {
                ours = ours.session_id(s);
                theirs.session_id = Some(s.clone());
            }
            if rng.chance(80) {
                let a = rng.pick(&APPS).to_string();
                ours = ours.app_name(&a);
                theirs.app_name = Some(a);
            }
            if rng.chance(80) {
                let e = rng.pick(&ENVS).to_string();
                ours = ours.environment(&e);
                theirs.environment = Some(e);
            }
            if rng.chance(80) {
                let ip = rng.pick(&IPS).to_string();
                ours = ours.remote_address(&ip);
                theirs.remote_address = Some(ip);
            }
            let t = rng.pick(&[
                "2023-06-01T00:00:00Z",
                "2024-03-01T10:00:00Z",
                "2024-06-15T12:00:00Z",
                "2026-01-01T00:00:00Z",
                "garbage",
            ]);
            ours = ours.current_time(*t);
            theirs.current_time = Some(t.to_string());
            // tenantId and plan are always present: variant stickiness may name them.
            let tenant = *rng.pick(tenants);
            ours = ours.tenant(tenant);
            props.insert("tenantId".to_owned(), tenant.to_string());
            let plan = rng.pick(&PLANS).to_string();
            ours = ours.plan(&plan);
            props.insert("plan".to_owned(), plan);
            for (name, pool) in [
                ("region", &REGIONS[..]),
                ("appVersion", &VERSIONS[..]),
                ("score", &SCORES[..]),
            ] {
                if rng.chance(75) {
                    let v = rng.pick(pool).to_string();
                    ours = ours.property(name, &v);
                    props.insert(name.to_owned(), v);
                }
            }
            theirs.properties = Some(props);
            (ours, theirs)
        })
        .collect()
}

#[test]
fn agrees_with_unleash_yggdrasil_on_random_flags_and_contexts() {
    // Another seed: SAAS_FLAGS_DIFF_SEED=<u64>.
    let seed = std::env::var("SAAS_FLAGS_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5aa5_f1a6_2026_1123);
    let mut rng = Rng(seed);
    let tenants = tenants();
    let (mut evaluations, mut enabled_seen, mut variants_seen) = (0usize, 0usize, 0usize);
    for round in 0..10 {
        let segments: Vec<Segment> = (0..5)
            .map(|id| Segment {
                id,
                name: None,
                constraints: (0..1 + rng.below(2)).map(|_| constraint(&mut rng, &tenants)).collect(),
            })
            .collect();
        let defs = flags(&mut rng, &tenants, 200, segments.len());
        let ctxs = contexts(&mut rng, &tenants, 60);

        let direct = FlagSetBuilder::new(ENV)
            .mode(Mode::Lenient)
            .segments(segments.clone())
            .flags(
                defs.iter()
                    .cloned()
                    .map(|definition| Versioned { definition, version: 1 }),
            )
            .build()
            .unwrap();
        let payload = ClientFeatures::from_definitions(&defs, &segments, ENV);
        let json = serde_json::to_string(&payload).unwrap();
        let imported = ClientFeatures::from_json(json.as_bytes()).unwrap().compile();
        let theirs = EngineState::default();
        let warnings = theirs.take_state(UpdateMessage::FullResponse(serde_json::from_str(&json).unwrap()));
        assert_eq!(
            direct.warnings().len(),
            warnings.as_ref().map_or(0, Vec::len),
            "round {round}: compile warnings differ: ours {:?}, theirs {warnings:?}",
            direct.warnings()
        );

        for d in &defs {
            for (ours, yctx) in &ctxs {
                let want = theirs.is_enabled(&d.name, yctx, &None);
                let want_variant = theirs.get_variant(&d.name, yctx, &None);
                for (label, set) in [("direct", &direct), ("imported", &imported)] {
                    let got = set.evaluate(&d.name, ours);
                    assert_eq!(
                        got.enabled,
                        want,
                        "round {round} {label}: {} enabled differs for {ours:?}\n{}",
                        d.name,
                        serde_json::to_string_pretty(&payload.features.iter().find(|f| f.name == d.name)).unwrap()
                    );
                    let v = set.variant(&d.name, ours);
                    assert_eq!(
                        (
                            v.name,
                            v.enabled,
                            v.feature_enabled,
                            v.payload.map(|p| p.value.as_str())
                        ),
                        (
                            want_variant.name.as_str(),
                            want_variant.enabled,
                            want_variant.feature_enabled,
                            want_variant.payload.as_ref().map(|p| p.value.as_str())
                        ),
                        "round {round} {label}: {} variant differs for {ours:?}\n{}",
                        d.name,
                        serde_json::to_string_pretty(&payload.features.iter().find(|f| f.name == d.name)).unwrap()
                    );
                }
                evaluations += 1;
                enabled_seen += usize::from(want);
                variants_seen += usize::from(want_variant.enabled);
            }
        }
    }
    assert!(evaluations >= 100_000, "{evaluations}");
    // The generator must produce both outcomes in earnest.
    assert!(
        enabled_seen > evaluations / 10 && enabled_seen < evaluations * 9 / 10,
        "{enabled_seen}/{evaluations}"
    );
    assert!(variants_seen > evaluations / 20, "{variants_seen}/{evaluations}");
    println!("{evaluations} evaluations, {enabled_seen} enabled, {variants_seen} with a variant");
}

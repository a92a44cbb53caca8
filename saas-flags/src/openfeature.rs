//! An OpenFeature provider (feature `openfeature`): applications written against the
//! OpenFeature API (`open-feature` crate) evaluate with saas-flags.
//!
//! Booleans are the flag's on/off value. Strings, numbers and structures come from the
//! chosen variant's payload (`string`, `number`, `json`), as in Unleash's own OpenFeature
//! providers; a flag that is off or has no variant answers with an error, so the caller's
//! default applies. The context's targeting key is the user id; its custom fields are
//! context fields or properties by name (`tenantId`, `plan`, `region`, …).

use open_feature::provider::{FeatureProvider, ProviderMetadata, ResolutionDetails};
use open_feature::{
    EvaluationContext, EvaluationContextFieldValue, EvaluationError, EvaluationErrorCode, EvaluationReason,
    EvaluationResult, StructValue, Value,
};

use crate::context::Context;
use crate::eval::{Evaluation, Reason, VariantReason};
use crate::store::FlagStore;

/// The provider.
#[derive(Debug, Clone)]
pub struct SaasFlagsProvider {
    store: FlagStore,
    metadata: ProviderMetadata,
}

impl SaasFlagsProvider {
    /// A provider evaluating with `store`'s current flags.
    pub fn new(store: FlagStore) -> Self {
        SaasFlagsProvider {
            store,
            metadata: ProviderMetadata::new("saas-flags"),
        }
    }
}

/// The saas-flags context for an OpenFeature context.
pub fn context(ec: &EvaluationContext) -> Context {
    let mut ctx = Context::new();
    if let Some(k) = &ec.targeting_key {
        ctx = ctx.user_id(k);
    }
    for (k, v) in &ec.custom_fields {
        let s = match v {
            EvaluationContextFieldValue::Bool(b) => b.to_string(),
            EvaluationContextFieldValue::Int(i) => i.to_string(),
            EvaluationContextFieldValue::Float(f) => f.to_string(),
            EvaluationContextFieldValue::String(s) => s.clone(),
            // Dates and structures have no Unleash string form.
            _ => continue,
        };
        ctx.set_property(k, s);
    }
    ctx
}

fn reason(e: &Evaluation<'_>) -> EvaluationReason {
    match (e.reason, e.variant.map(|v| v.reason)) {
        (_, Some(VariantReason::Split)) => EvaluationReason::Split,
        (_, Some(VariantReason::Override)) => EvaluationReason::TargetingMatch,
        (Reason::Static, _) => EvaluationReason::Static,
        (Reason::TargetingMatch { .. } | Reason::TenantOverride, _) => EvaluationReason::TargetingMatch,
        (Reason::Disabled, _) => EvaluationReason::Disabled,
        (Reason::NotFound | Reason::Invalid, _) => EvaluationReason::Error,
        _ => EvaluationReason::Default,
    }
}

fn error(code: EvaluationErrorCode, message: impl Into<String>) -> EvaluationError {
    EvaluationError {
        code,
        message: Some(message.into()),
    }
}

impl SaasFlagsProvider {
    fn payload<T>(
        &self,
        key: &str,
        ec: &EvaluationContext,
        kinds: &[&str],
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> EvaluationResult<ResolutionDetails<T>> {
        let set = self.store.snapshot();
        let e = set.evaluate_counted(key, &context(ec));
        match e.reason {
            Reason::NotFound => return Err(error(EvaluationErrorCode::FlagNotFound, format!("no flag {key:?}"))),
            Reason::Invalid => {
                return Err(error(
                    EvaluationErrorCode::ParseError,
                    format!("flag {key:?} does not compile"),
                ));
            }
            _ => {}
        }
        let Some(v) = e.variant else {
            return Err(error(
                EvaluationErrorCode::General("no variant".into()),
                format!("flag {key:?} is off or has no variant"),
            ));
        };
        let Some(p) = v.payload.filter(|p| kinds.contains(&p.kind.as_str())) else {
            return Err(error(
                EvaluationErrorCode::TypeMismatch,
                format!("variant {:?} has no {kinds:?} payload", v.name),
            ));
        };
        let value =
            parse(&p.value).ok_or_else(|| error(EvaluationErrorCode::ParseError, format!("payload {:?}", p.value)))?;
        Ok(ResolutionDetails {
            value,
            variant: Some(v.name.to_owned()),
            reason: Some(reason(&e)),
            flag_metadata: None,
        })
    }
}

#[open_feature::async_trait]
impl FeatureProvider for SaasFlagsProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(&self, key: &str, ec: &EvaluationContext) -> EvaluationResult<ResolutionDetails<bool>> {
        let set = self.store.snapshot();
        let e = set.evaluate_counted(key, &context(ec));
        match e.reason {
            Reason::NotFound => Err(error(EvaluationErrorCode::FlagNotFound, format!("no flag {key:?}"))),
            _ => Ok(ResolutionDetails {
                value: e.enabled,
                variant: e.variant.map(|v| v.name.to_owned()),
                reason: Some(reason(&e)),
                flag_metadata: None,
            }),
        }
    }

    async fn resolve_int_value(&self, key: &str, ec: &EvaluationContext) -> EvaluationResult<ResolutionDetails<i64>> {
        self.payload(key, ec, &["number"], |s| s.trim().parse().ok())
    }

    async fn resolve_float_value(&self, key: &str, ec: &EvaluationContext) -> EvaluationResult<ResolutionDetails<f64>> {
        self.payload(key, ec, &["number"], |s| s.trim().parse().ok())
    }

    async fn resolve_string_value(
        &self,
        key: &str,
        ec: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        self.payload(key, ec, &["string", "csv", "json", "number"], |s| Some(s.to_owned()))
    }

    async fn resolve_struct_value(
        &self,
        key: &str,
        ec: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        self.payload(key, ec, &["json"], |s| {
            let json: serde_json::Value = serde_json::from_str(s).ok()?;
            match Value::try_from(json).ok()? {
                Value::Struct(st) => Some(st),
                _ => None,
            }
        })
    }
}
